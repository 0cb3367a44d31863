#!/usr/bin/env bash
# A soak on loopback: `serve --workers 2` on the generated `tiny` preset under `loadgen` at 256
# concurrent streams for SECONDS (default 60; 600 for the long form), mixing in client
# cancellations, deadlines that expire, invalid requests and oversized prompts. Prints requests
# sent, completed, failed by status code, unexpected and unanswered calls, crashes, the resident
# memory of every process after warm-up and at the end, and latency percentiles. Exits 1 when a
# call went unanswered, an answer was not one a correct server gives, a process crashed or
# restarted, or a process grew by 10% or more.
#   scripts/soak.sh [SECONDS]
# Environment: DAEDALUS_BIN (default build/bin/daedalus), SOAK_CONCURRENCY (256), SOAK_MIX
# (cancel=0.05,deadline=0.05,invalid=0.05,oversized=0.02), SOAK_WARMUP (seconds; default a tenth
# of SECONDS, at least 20: a process's resident memory settles over minutes, as its threads'
# stacks and malloc's arenas reach their working size). Memory is compared between the idle
# moments before and after the measured load.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-60}"
bin="${DAEDALUS_BIN:-$root/build/bin/daedalus}"
concurrency="${SOAK_CONCURRENCY:-256}"
mix="${SOAK_MIX:-cancel=0.05,deadline=0.05,invalid=0.05,oversized=0.02}"
warmup="${SOAK_WARMUP:-$(( seconds / 10 > 20 ? seconds / 10 : 20 ))}"
[ -x "$bin" ] || "$root/scripts/build.sh"
work="$(mktemp -d /tmp/daedalus-soak-XXXXXX)"
serve_pid=""
cleanup() {
  if [ -n "$serve_pid" ] && kill -0 "$serve_pid" 2>/dev/null; then kill -TERM "$serve_pid"; wait "$serve_pid" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export OMP_NUM_THREADS=1

# The workers get one thread each: on a 2-core machine the load generator needs the rest.
"$bin" serve --workers 2 --threads 1 --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 600); do
  grep -q '^ready ' "$work/serve.out" 2>/dev/null && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; echo "soak: serve exited before it was ready" >&2; exit 1; }
  sleep 0.2
done
address="$(sed -n 's/^ready //p' "$work/serve.out")"
[ -n "$address" ] || { echo "soak: serve never became ready" >&2; exit 1; }

loadgen() {  # DURATION OUT
  "$bin" loadgen --server "$address" --concurrency "$concurrency" --duration "$1" --prompt-len 32 --max-new-tokens 32 \
      --mix "$mix" --timeout 120 --json >"$2"
}
snapshot() {  # OUT: pid, role and resident kB of the coordinator and every worker
  "$bin" status --server "$address" --json >"$work/status.json"
  python3 - "$serve_pid" "$work/status.json" >"$1" <<'PY'
import json, sys
serve, status = int(sys.argv[1]), json.load(open(sys.argv[2]))
procs = [("coordinator", serve)] + [(f"worker {w['rank']}", int(w["pid"])) for w in status["workers"]]
for role, pid in procs:
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
    print(json.dumps({"role": role, "pid": pid, "rss_kb": rss}))
PY
}

echo "soak: serve --workers 2 (tiny) at $address; warm-up ${warmup} s, then ${seconds} s at $concurrency streams, mix $mix"
loadgen "$warmup" "$work/warmup.json"
snapshot "$work/rss_start.jsonl"
# The coordinator's resident memory under load every 10 s, to show whether it settles or climbs.
( while sleep 10 && kill -0 "$serve_pid" 2>/dev/null; do
    sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$serve_pid/status" 2>/dev/null
    sleep 10
  done >"$work/rss_samples" ) &
sampler=$!
loadgen "$seconds" "$work/soak.json"
snapshot "$work/rss_end.jsonl"
kill "$sampler" 2>/dev/null || true
restarts="$(grep -c 'the workers exited' "$work/serve.log" || true)"
kill -TERM "$serve_pid"
serve_rc=0
wait "$serve_pid" || serve_rc=$?
serve_pid=""

python3 - "$work" "$restarts" "$serve_rc" <<'PY'
import json, sys
work, restarts, serve_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = json.loads(open(f"{work}/soak.json").read().strip().splitlines()[-1])
start = [json.loads(l) for l in open(f"{work}/rss_start.jsonl")]
end = {p["role"]: p for p in (json.loads(l) for l in open(f"{work}/rss_end.jsonl"))}
crashes = restarts + (serve_rc != 0) + sum(1 for p in start if p["role"] not in end or end[p["role"]]["pid"] != p["pid"])
failed = ", ".join(f"{code} {n}" for code, n in sorted(r["failed"].items())) or "none"
print(f"requests sent      {r['requests']} in {r['seconds']:.1f} s ({r['requests'] / r['seconds']:.1f}/s)")
print(f"completed          {r['ok']}")
print(f"failed by status   {failed}")
for kind, codes in sorted(r["by_kind"].items()):
    print(f"  {kind:<16} " + ", ".join(f"{c} {n}" for c, n in sorted(codes.items())))
print(f"unexpected         {r['unexpected']} (must be 0)")
print(f"unanswered         {r['unanswered']} (must be 0)")
print(f"crashes            {crashes} (must be 0; worker restarts {restarts}, serve exit status {serve_rc})")
grown = []
for p in start:
    e = end.get(p["role"])
    if e is None:
        continue
    growth = (e["rss_kb"] - p["rss_kb"]) / p["rss_kb"] * 100
    grown.append(growth)
    print(f"resident memory    {p['role']:<12} {p['rss_kb'] / 1024:8.1f} MiB after warm-up, {e['rss_kb'] / 1024:8.1f} MiB at the end ({growth:+.1f}%)")
samples = [int(l) for l in open(f"{work}/rss_samples") if l.strip()]
if samples:
    step = max(1, len(samples) // 10)
    print("coordinator RSS    under load: " + " ".join(f"{k / 1024:.1f}" for k in samples[::step]) + f" MiB (every {10 * step} s)")
print(f"latency (ok)       p50 {r['latency_ms_p50']:.1f} ms, p90 {r['latency_ms_p90']:.1f} ms, p99 {r['latency_ms_p99']:.1f} ms; "
      f"ttft p50 {r['ttft_ms_p50']:.1f} / p99 {r['ttft_ms_p99']:.1f} ms; itl p50 {r['itl_ms_p50']:.1f} / p99 {r['itl_ms_p99']:.1f} ms")
print(f"output tokens/s    {r['output_tokens_per_s']:.0f}")
bad = r["unanswered"] > 0 or r["unexpected"] > 0 or crashes > 0 or any(g >= 10 for g in grown) or r["ok"] == 0
print("soak: " + ("FAILED" if bad else "passed"))
sys.exit(1 if bad else 0)
PY
