#!/usr/bin/env bash
# The coordinator's overhead: output tokens/s through a local cluster (serve + loadgen at
# concurrency 64, REQUESTS requests) beside the same workers running the same prompts under
# `mpirun ... daedalus run`. Also prints the loadgen sweep at concurrency 1, 16 and 64.
#   scripts/bench-cluster.sh [WORKERS] [PRESET] [REQUESTS]      (defaults: 2 tiny 512)
# Enough requests for several waves of 64: with one wave, both sides last a fraction of a second
# and the ramp (the first prefills, the last stragglers) weighs more than the steady state.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
d="$root/build/bin/daedalus"
workers="${1:-2}" preset="${2:-tiny}" requests="${3:-512}"
source "$root/scripts/lib/serve.sh"
serve_workdir
"$d" make-model --preset "$preset" --out "$tmp/model" >/dev/null
threads=$(( $(nproc) / workers )); [ "$threads" -ge 1 ] || threads=1

start_serve "$tmp" --model "$tmp/model" --workers "$workers" --listen 127.0.0.1:0
addr="$serve_addr"

echo "== loadgen sweep: $preset, $workers workers, $threads thread(s) each"
"$d" loadgen --server "$addr" --concurrency 1,16,64 --prompt-len 128 --max-new-tokens 64
echo "== concurrency 64, the comparison: $requests requests through the cluster"
"$d" loadgen --server "$addr" --concurrency 64 --requests "$requests" --prompt-len 128 --max-new-tokens 64 \
  --seed 2 --write-prompts "$tmp/prompts.jsonl" --json | tee "$tmp/cluster.json"
stop_serve

echo "== the same $requests prompts under mpirun -np $workers daedalus run"
root_flag=""; [ "$(id -u)" = 0 ] && root_flag="--allow-run-as-root"
OMP_NUM_THREADS=$threads mpirun $root_flag --oversubscribe -np "$workers" "$d" run --model "$tmp/model" \
  --prompts "$tmp/prompts.jsonl" --threads "$threads" --output /dev/null 2>"$tmp/run.err"
grep '^generated' "$tmp/run.err"
cluster=$(python3 -c "import json,sys; print(json.loads(open('$tmp/cluster.json').readlines()[-1])['output_tokens_per_s'])")
direct=$(sed -n 's/.*: \([0-9.]*\) tokens\/s.*/\1/p' "$tmp/run.err")
python3 -c "print(f'cluster {float($cluster):.1f} tok/s vs run {float($direct):.1f} tok/s: {100*float($cluster)/float($direct):.0f}% (target >= 80%)')"
