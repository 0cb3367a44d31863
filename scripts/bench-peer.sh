#!/usr/bin/env bash
# Daedalus against llama.cpp on the same weights and the same CPU, in one run.
#   scripts/bench-peer.sh [ROUNDS]      (default 3; minutes; not part of CI)
# 1. Installs into build/peer-venv pinned llama-cpp-python (which builds llama.cpp from source
#    for this CPU) and gguf, from PyPI.
# 2. Makes the `bench` preset in bf16 (make-model --seed 7) and writes it as a GGUF in
#    llama.cpp's deepseek2 layout (scripts/peer/make_gguf.py).
# 3. Checks that llama.cpp's prompt logits agree with `daedalus run --dump-logits` within bf16
#    tolerance, so that the comparison is of the same model.
# 4. Times prefill of 512 tokens (the best of 2 for each engine, after a warm-up prompt of the
#    same length: the first long prompt grows and faults in either engine's buffers) and batch-1
#    decode of 128 tokens (after a 64-token prompt) for both, alternating, ROUNDS rounds, 2
#    threads each; then, at a long context, prefill of 1,920 tokens and batch-1 decode of 64
#    tokens after them (llama.cpp's context holds 2,048); prints every round (with the DRAM read
#    bandwidth bench measured in it: a machine whose load moves moves both engines' figures), the
#    medians and the ratios, then the median of each round's own ratio, with the machine and
#    Daedalus' kernel tier.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${1:-3}"
threads="${THREADS:-2}"
reps=2  # 512-token prefills per engine and round, the best reported
daedalus="${DAEDALUS_BIN:-$root/build/bin/daedalus}"
venv="$root/build/peer-venv"
work="${PEER_DIR:-$root/build/peer}"
[ -x "$daedalus" ] || { echo "bench-peer.sh: build first ($daedalus missing)" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then /usr/bin/python3 -m venv --system-site-packages "$venv"; fi
"$venv/bin/python" -c "import llama_cpp, gguf" 2>/dev/null ||
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/pip" install -q --disable-pip-version-check \
    "llama-cpp-python==0.3.36" "gguf==0.19.0"
mkdir -p "$work"
model="$work/bench-bf16" gguf="$work/bench-bf16.gguf"
[ -f "$model/config.json" ] || "$daedalus" make-model --preset bench --seed 7 --dtype bf16 --out "$model" >/dev/null
[ -f "$gguf" ] || "$venv/bin/python" "$root/scripts/peer/make_gguf.py" --model "$model" --out "$gguf" >/dev/null

prompt="$(/usr/bin/python3 -c "print(','.join(str((i * 37 + 11) % 32000) for i in range(32)))")"
OMP_NUM_THREADS=$threads "$daedalus" run --model "$model" --prompt-ids "$prompt" --max-new-tokens 1 --temperature 0 \
  --dump-logits "$work/ours.json" >/dev/null 2>&1
"$venv/bin/python" "$root/scripts/peer/llama_peer.py" check --gguf "$gguf" --ours "$work/ours.json" --threads "$threads"

tier="$(OMP_NUM_THREADS=$threads "$daedalus" run --model "$model" --prompt-ids 1 --max-new-tokens 1 --verbose 2>&1 >/dev/null)"
tier="${tier%%$'\n'*}"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $threads threads; daedalus $tier"
results="$work/rounds.jsonl"
: > "$results"
for r in $(seq 1 "$rounds"); do
  ours="$(OMP_NUM_THREADS=$threads "$daedalus" bench --model "$model" --threads "$threads" --prompt-len 512 \
          --batches 1 --context 64 --steps 128 --reps "$reps" --json 2>/dev/null)"
  theirs="$("$venv/bin/python" "$root/scripts/peer/llama_peer.py" time --gguf "$gguf" --prompt-len 512 --context 64 \
            --steps 128 --reps "$reps" --threads "$threads")"
  ours_long="$(OMP_NUM_THREADS=$threads "$daedalus" bench --model "$model" --threads "$threads" --prompt-len 1920 \
               --batches 1 --context 1920 --steps 64 --reps 1 --json 2>/dev/null)"
  theirs_long="$("$venv/bin/python" "$root/scripts/peer/llama_peer.py" time --gguf "$gguf" --prompt-len 1920 \
                 --context 1920 --steps 64 --threads "$threads")"
  /usr/bin/python3 - "$r" "$ours" "$theirs" "$ours_long" "$theirs_long" >> "$results" <<'PY'
import json, sys
r, ours, theirs, ours_long, theirs_long = int(sys.argv[1]), *(json.loads(a) for a in sys.argv[2:])
print(json.dumps({"round": r, "daedalus_prefill": ours["prefill_tok_s"], "daedalus_decode": ours["decode_tok_s"]["1"],
                  "llama_prefill": theirs["prefill_tok_s"], "llama_decode": theirs["decode_tok_s"],
                  "daedalus_prefill_long": ours_long["prefill_tok_s"], "daedalus_decode_long": ours_long["decode_tok_s"]["1"],
                  "llama_prefill_long": theirs_long["prefill_tok_s"], "llama_decode_long": theirs_long["decode_tok_s"],
                  "bandwidth_gbs": ours["bandwidth_gbs"], "bf16_peak_gflops": ours["bf16_peak_gflops"],
                  "prefill_share_of_peak": ours["prefill_share_of_peak"],
                  "decode_share_of_roofline": ours["decode_share_of_roofline"]["1"]}))
PY
  tail -1 "$results" | /usr/bin/python3 -c "
import json, sys; j = json.load(sys.stdin)
print(f\"round {j['round']}: prefill 512 daedalus {j['daedalus_prefill']:.0f} / llama.cpp {j['llama_prefill']:.0f} tok/s; \"
      f\"decode b1 daedalus {j['daedalus_decode']:.1f} / llama.cpp {j['llama_decode']:.1f} tok/s \"
      f\"(daedalus at {100 * j['prefill_share_of_peak']:.0f}% of the bf16 peak, {100 * j['decode_share_of_roofline']:.0f}% of the DRAM roofline; \"
      f\"DRAM read {j['bandwidth_gbs']:.1f} GB/s)\")
print(f\"round {j['round']}, 1,920-token context: prefill daedalus {j['daedalus_prefill_long']:.0f} / llama.cpp \"
      f\"{j['llama_prefill_long']:.0f} tok/s; decode b1 daedalus {j['daedalus_decode_long']:.1f} / llama.cpp \"
      f\"{j['llama_decode_long']:.1f} tok/s\")"
done
/usr/bin/python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {k: statistics.median(r[k] for r in rows)
       for k in ("daedalus_prefill", "llama_prefill", "daedalus_decode", "llama_decode", "daedalus_prefill_long",
                 "llama_prefill_long", "daedalus_decode_long", "llama_decode_long")}
print(f"median of {len(rows)} rounds: prefill 512 tokens: daedalus {med['daedalus_prefill']:.0f} tok/s, llama.cpp "
      f"{med['llama_prefill']:.0f} tok/s, {med['daedalus_prefill'] / med['llama_prefill']:.2f}x")
print(f"median of {len(rows)} rounds: decode batch 1: daedalus {med['daedalus_decode']:.1f} tok/s, llama.cpp "
      f"{med['llama_decode']:.1f} tok/s, {med['daedalus_decode'] / med['llama_decode']:.2f}x")
print(f"median of {len(rows)} rounds: prefill 1,920 tokens: daedalus {med['daedalus_prefill_long']:.0f} tok/s, "
      f"llama.cpp {med['llama_prefill_long']:.0f} tok/s, {med['daedalus_prefill_long'] / med['llama_prefill_long']:.2f}x")
print(f"median of {len(rows)} rounds: decode batch 1 at a 1,920-token context: daedalus "
      f"{med['daedalus_decode_long']:.1f} tok/s, llama.cpp {med['llama_decode_long']:.1f} tok/s, "
      f"{med['daedalus_decode_long'] / med['llama_decode_long']:.2f}x")
# Each round's own ratio: on a shared machine both engines speed up and slow down together
# between rounds, which a ratio of medians taken from different rounds does not cancel.
ratio = {k: statistics.median(r[f"daedalus_{k}"] / r[f"llama_{k}"] for r in rows)
         for k in ("prefill", "decode", "prefill_long", "decode_long")}
print(f"median of per-round ratios: prefill 512 {ratio['prefill']:.2f}x, decode batch 1 {ratio['decode']:.2f}x, "
      f"prefill 1,920 {ratio['prefill_long']:.2f}x, decode batch 1 after 1,920 {ratio['decode_long']:.2f}x")
PY
