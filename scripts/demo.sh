#!/usr/bin/env bash
# Installs what is missing, builds, makes the `small` model, and generates from it: a handful
# of prompts run as one continuous batch, then a speed summary.
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
echo "== generating (one continuous batch of 4 requests) from $model"
time "$bin" run --model "$model" --prompts "$prompts" --ignore-eos
echo "== speed on this machine (small model)"
"$bin" bench --model "$model" --prompt-len 128 --batches 1,8 --steps 16 --reps 1
