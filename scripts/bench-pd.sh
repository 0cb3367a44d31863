#!/usr/bin/env bash
# Prefill/decode disaggregation against mixed workers, on this machine: `serve --prefill-workers
# 1 --decode-workers 1` and `serve --workers 2` under the same load — a quarter of the requests
# with long prompts, the rest short, all generating the same number of tokens (`loadgen
# --long-fraction`). Prints for both: the short requests' ITL p50 and p99, TTFT p50 and p99 and
# output tokens/s; for the disaggregated run the KV transfer rate (bytes read over the summed
# read time, from /metrics) beside `ucx_perftest` reading a page-sized message in the same run
# (UCP get, error handling on, as the transfer's endpoints; and put, for comparison). Targets: short-request ITL p99 at
# least 2x better disaggregated, at no more than 20% lower output tokens/s.
#   scripts/bench-pd.sh [PRESET] [REQUESTS] [CONCURRENCY] [LONG] [SHORT] [NEW]
#   (defaults: small 64 16 2048 64 128)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
d="$root/build/bin/daedalus"
preset="${1:-small}" requests="${2:-64}" concurrency="${3:-16}" long="${4:-2048}" short="${5:-64}" new="${6:-128}"
source "$root/scripts/lib/serve.sh"
serve_workdir
"$d" make-model --preset "$preset" --out "$tmp/model" >/dev/null
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $("$d" run --model "$tmp/model" --prompt-ids 1 --max-new-tokens 1 --verbose 2>&1 >/dev/null | grep 'kernel tier')"

for mode in mixed pd; do
  if [ "$mode" = mixed ]; then
    start_serve "$tmp" --model "$tmp/model" --workers 2 --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
  else
    start_serve "$tmp" --model "$tmp/model" --prefill-workers 1 --decode-workers 1 --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
  fi
  metrics="$(sed -n 's|.*metrics at \(http://[^ ]*\)|\1|p' "$tmp/serve.err" | head -1)"
  echo "== $mode: $requests requests, $concurrency in flight, 1 in 4 with $long-token prompts, the rest $short; $new new tokens each"
  "$d" loadgen --server "$serve_addr" --concurrency "$concurrency" --requests "$requests" --prompt-len "$short" \
    --long-fraction 0.25 --long-prompt-len "$long" --max-new-tokens "$new" --json | tee "$tmp/$mode.json"
  curl -s "$metrics" >"$tmp/$mode.metrics"
  stop_serve
done

# The same message size over UCX alone: a whole page (kv_lora_rank + qk_rope_head_dim values per
# token and layer, bf16, page_size tokens of every layer).
page_bytes="$(python3 - "$tmp/model/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
print((c["kv_lora_rank"] + c["qk_rope_head_dim"]) * 2 * c["num_hidden_layers"] * 64)
PY
)"
# ucp_get is what the transfer does; ucp_put_bw is the other one-sided way it could have. Both
# with 32 messages outstanding, as a 2,048-token prompt's 32 pages are read at once.
for test in ucp_get ucp_put_bw; do
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  ucx_perftest -p "$port" -e >/dev/null 2>&1 &
  perf_server=$!
  sleep 0.5
  timeout 120 ucx_perftest 127.0.0.1 -p "$port" -t "$test" -s "$page_bytes" -O 32 -n 1000 -w 50 -e -f >"$tmp/$test.txt" 2>&1 || true
  kill "$perf_server" 2>/dev/null || true
  wait "$perf_server" 2>/dev/null || true
done

python3 - "$tmp" "$page_bytes" <<'PY'
import json, re, sys
tmp, page = sys.argv[1], int(sys.argv[2])
run = {m: json.loads(open(f"{tmp}/{m}.json").read().splitlines()[-1]) for m in ("mixed", "pd")}
print(f"{'':8} {'short itl p50':>14} {'short itl p99':>14} {'ttft p50':>10} {'ttft p99':>10} {'output tok/s':>13} {'failed':>7}")
for m, r in run.items():
    print(f"{m:8} {r['itl_short_ms_p50']:12.1f}ms {r['itl_short_ms_p99']:12.1f}ms {r['ttft_ms_p50']:8.0f}ms {r['ttft_ms_p99']:8.0f}ms "
          f"{r['output_tokens_per_s']:13.1f} {r['requests'] - r['ok']:7d}")
metrics = open(f"{tmp}/pd.metrics").read()
value = lambda name: float(re.search(rf"^{name} (\S+)$", metrics, re.M).group(1))
moved, seconds, reads = value("daedalus_kv_transfer_bytes_total"), value("daedalus_kv_transfer_seconds_sum"), value("daedalus_kv_transfer_seconds_count")
def perftest(test):  # the overall bandwidth, GB/s
    rows = [l.split() for l in open(f"{tmp}/{test}.txt") if re.match(r"^\s+\d+\s+[\d.]+", l)]
    return float(rows[-1][-3]) / 1000 if rows else float("nan")
perf, put = perftest("ucp_get"), perftest("ucp_put_bw")
rate = moved / seconds / 1e9 if seconds else float("nan")
print(f"KV transfer: {moved / 1e6:.1f} MB in {int(reads)} reads, {rate:.3f} GB/s (each read from its start to its end); "
      f"ucx_perftest ucp_get of {page} B messages: {perf:.3f} GB/s; {rate / perf:.0%} of it" if perf == perf else
      f"KV transfer: {rate:.3f} GB/s; ucx_perftest gave no figure (see its output)")
print(f"ucx_perftest ucp_put_bw, the same messages: {put:.3f} GB/s")
itl = run["mixed"]["itl_short_ms_p99"] / run["pd"]["itl_short_ms_p99"]
tps = run["pd"]["output_tokens_per_s"] / run["mixed"]["output_tokens_per_s"]
print(f"short-request ITL p99: {itl:.2f}x better disaggregated (target >= 2x); output tokens/s: {tps:.2f} of mixed "
      f"(target >= 0.80)")
PY
