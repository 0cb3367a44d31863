#!/usr/bin/env bash
# Installs what is missing, builds, makes the `small` model, and starts a local cluster on it
# (a coordinator and 2 workers under mpirun), sends a handful of concurrent requests, prints
# their tokens, the throughput and the expert-load table, and shuts the cluster down.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
bin="$root/build/bin/daedalus"
model="$root/out/models/small-bf16"
[ -f "$model/config.json" ] || "$bin" make-model --preset small --seed 7 --dtype bf16 --out "$model"
prompts="$root/out/demo-prompts.jsonl"
cat > "$prompts" <<'JSONL'
{"id": "greedy", "prompt_ids": [1, 2, 3, 4, 5], "max_new_tokens": 16}
{"id": "warm", "prompt_ids": [100, 200, 300], "max_new_tokens": 16, "temperature": 0.8, "top_p": 0.9, "seed": 1}
{"id": "topk", "prompt_ids": [42, 42, 42, 42, 42, 42, 42, 42], "max_new_tokens": 16, "temperature": 1.0, "top_k": 20, "seed": 2}
{"id": "long", "prompt_ids": [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24], "max_new_tokens": 24}
JSONL
log="$root/out/demo-serve.log"
echo "== starting a local cluster: coordinator + 2 workers on $model"
"$bin" serve --model "$model" --workers 2 --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 >"$root/out/demo-serve.out" 2>"$log" &
serve=$!
trap 'kill $serve 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do grep -q '^ready' "$root/out/demo-serve.out" && break; sleep 0.2; done
addr="$(awk '/^ready/{print $2}' "$root/out/demo-serve.out")"
[ -n "$addr" ] || { echo "the cluster did not come up:"; cat "$log"; exit 1; }
echo "ready at $addr"
echo "== 4 concurrent streaming requests"
"$bin" generate --server "$addr" --prompts "$prompts" --concurrency 4 --ignore-eos
echo "== throughput and latency (32 requests, 8 in flight, 64-token prompts, 16 new tokens each)"
"$bin" loadgen --server "$addr" --concurrency 8 --requests 32 --prompt-len 64 --max-new-tokens 16
echo "== cluster status and expert load"
"$bin" status --server "$addr"
echo "== shutting down"
kill -TERM "$serve"
wait "$serve"
trap - EXIT
tail -n 1 "$log"
