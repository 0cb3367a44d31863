# Sourced by the scripts that drive a local cluster (callers set `d`, the daedalus binary).
#   start_serve DIR ARGS...  runs `daedalus serve ARGS` in the background (stdout in
#                            DIR/serve.out, stderr in DIR/serve.err), waits up to 2 minutes for
#                            its "ready ADDRESS" line and sets serve_pid and serve_addr; when it
#                            never comes, prints serve's stderr and exits 1.
#   stop_serve               stops it and waits for it (nothing when none runs).
#   serve_workdir            sets `tmp` to a new temporary folder; on exit, serve is stopped and
#                            the folder removed.
serve_pid="" serve_addr=""

start_serve() {
  local dir="$1"
  shift
  "$d" serve "$@" >"$dir/serve.out" 2>"$dir/serve.err" &
  serve_pid=$!
  for _ in $(seq 1 600); do grep -q '^ready' "$dir/serve.out" && break; sleep 0.2; done
  serve_addr="$(awk '/^ready/{print $2}' "$dir/serve.out")"
  [ -n "$serve_addr" ] || { echo "serve did not come up:" >&2; cat "$dir/serve.err" >&2; exit 1; }
}

stop_serve() {
  [ -n "$serve_pid" ] || return 0
  kill "$serve_pid" 2>/dev/null || true
  wait "$serve_pid" 2>/dev/null || true
  serve_pid=""
}

serve_workdir() {
  tmp="$(mktemp -d)"
  trap 'stop_serve; rm -rf "$tmp"' EXIT
}
