#!/usr/bin/env bash
# Elastic expert parallelism under load: `serve --workers 3 --transport ucx --redundant-experts 8`
# on the `small` preset under loadgen at 32 streams for 40 s. One worker is sent SIGKILL at 10 s;
# serve starts it again 15 s later (--relaunch-delay) and it joins the running cluster. Prints
# requests sent, completed and failed; seconds from the kill to the first token served after it
# and the longest any stream waited across the kill; output tokens/s before the kill, with 2
# workers and after the join (against the targets: >= 60% and, within 15 s of the join, >= 90%);
# the longest step any worker reported while experts move onto the joiner against the median
# step before the kill (target: at most 2x), beside the longest before the kill; and whether
# every request's tokens equal `run` on the same prompts. Steps carry at most MAX_BATCH_TOKENS
# tokens (serve --max-batch-tokens; 32 by default), so that a step with a new prompt's prefill
# takes about as long as a decode step and a stall would stand out; serve's default of 512 makes
# steady-state steps 15-40x the median at each wave of prompts.
#   scripts/bench-elastic.sh [PRESET] [SECONDS] [KILL_AT] [RELAUNCH_AFTER] [MAX_BATCH_TOKENS]   (small 40 10 15 32)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
d="$root/build/bin/daedalus"
preset="${1:-small}" seconds="${2:-40}" kill_at="${3:-10}" relaunch_after="${4:-15}" batch_tokens="${5:-32}"
source "$root/scripts/lib/serve.sh"
serve_workdir
"$d" make-model --preset "$preset" --out "$tmp/model" >/dev/null
threads=$(( $(nproc) / 3 )); [ "$threads" -ge 1 ] || threads=1
start_serve "$tmp" --model "$tmp/model" --workers 3 --transport ucx --redundant-experts 8 --threads "$threads" \
  --relaunch-delay "$relaunch_after" --max-batch-tokens "$batch_tokens" --listen 127.0.0.1:0
echo "== $preset, serve --workers 3 --transport ucx --redundant-experts 8 --max-batch-tokens $batch_tokens, $threads thread(s) each; loadgen 32 streams, ${seconds} s"
"$d" loadgen --server "$serve_addr" --concurrency 32 --duration "$seconds" --prompt-len 64 --max-new-tokens 64 \
  --trace "$tmp/trace.jsonl" --json >"$tmp/loadgen.json" &
loadgen=$!
start=$(date +%s.%N)
while kill -0 "$loadgen" 2>/dev/null; do  # the workers' step times and the cluster's shape, every 0.2 s
  "$d" status --server "$serve_addr" --json 2>/dev/null |
    python3 "$root/scripts/lib/elastic_report.py" sample "$(date +%s.%N)" >>"$tmp/steps.jsonl" || true
  sleep 0.2
done &
sampler=$!
sleep "$kill_at"
victim=$(pgrep -f "^$d worker" | sed -n 2p)
kill -9 "$victim"
killed=$(date +%s.%N)
echo "killed worker pid $victim at $(python3 -c "print(f'{$killed - $start:.1f}')") s"
wait "$loadgen"
wait "$sampler"
stop_serve
grep -E "lost|joined|re-formed|switched" "$tmp/serve.err" | cut -c1-220 || true
echo "== run on the same prompts (the completed requests)"
python3 "$root/scripts/lib/elastic_report.py" prompts "$tmp/trace.jsonl" >"$tmp/prompts.jsonl"
OMP_NUM_THREADS=$(nproc) "$d" run --model "$tmp/model" --prompts "$tmp/prompts.jsonl" --output "$tmp/run.jsonl" 2>/dev/null
python3 "$root/scripts/lib/elastic_report.py" report "$tmp/trace.jsonl" "$tmp/steps.jsonl" "$tmp/run.jsonl" "$start" "$killed"
