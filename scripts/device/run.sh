#!/usr/bin/env bash
# The GPU device check, run from a bundle that scripts/device-bundle.sh made. It needs only the
# NVIDIA driver, the CUDA toolkit under /usr/local/cuda and Python with the nvidia-nccl-cu13
# wheel. Within BUDGET_SECONDS (default 480) it:
#   1. runs every GPU test with CUDA_LAUNCH_BLOCKING=1 (skips, e.g. of tests that need two GPUs,
#      are listed),
#   2. compares `run --device cuda:0 --gpu-precision float` with `--device cpu` on a float tier
#      (the same greedy tokens) on the tiny and bench presets, with the bf16 and the FP8 latent
#      cache, and shows the fast numerics' tokens (launches blocking here too, so that a fault
#      inside a kernel is reported by that kernel's launch),
#   3. runs each benchmark part in its own process (one failure loses no other figure),
#   4. prints a summary table.
# Full logs go to LOG_DIR (default: a new temporary folder); the screen gets each step's last
# lines (a failed step's failures and more of its end), so the summary survives a short capture.
# Exit status: the number of failed steps.
# Usage: build/device-bundle/run.sh
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
start=$(date +%s)
budget=${BUDGET_SECONDS:-480}
log_dir="${LOG_DIR:-$(mktemp -d)}"
mkdir -p "$log_dir"
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( budget - $(elapsed) )); }
summary=()
failures=0

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit (and the budget's), its output
# into LOG_DIR/NAME.log and its end on screen; records a row for the summary (NOTE where it
# passed, its last line where it did not).
step() {
  local name=$1 limit=$2 t0 rc status note
  shift 2
  (( limit > $(left) )) && limit=$(left)
  echo
  echo "=== [$(elapsed)s] $name"
  rm -f "$log_dir/$name.log"  # a step not run leaves no earlier run's log for the summary to read
  if (( limit < 5 )); then
    summary+=("$(printf '%-34s %-8s %5s  %s' "$name" "NOT RUN" - "out of time")")
    failures=$((failures + 1))
    return
  fi
  t0=$(date +%s)
  # Through bash, so that COMMAND may be one of this script's functions.
  timeout -k 5 "$limit" bash -c "$(declare -f compare make_models)"$'\n''"$@"' step "$@" >"$log_dir/$name.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    tail -n 12 "$log_dir/$name.log"
  else
    grep -E -A4 'Failure$|^\[  FAILED  \] .* ms\)$|rror' "$log_dir/$name.log" | head -n 60
    echo "--- last lines:"
    tail -n 20 "$log_dir/$name.log"
  fi
  echo "--- full log: $log_dir/$name.log ($(wc -l <"$log_dir/$name.log") lines)"
  case $rc in
    0) status=ok ;;
    124 | 137) status=TIMEOUT ;;
    *) status="FAILED($rc)" ;;
  esac
  note=${NOTE:-}
  [ "$rc" -eq 0 ] || { failures=$((failures + 1)); note="$(tail -n 1 "$log_dir/$name.log" | cut -c1-100) "; }
  summary+=("$(printf '%-34s %-8s %5ss  %s' "$name" "$status" $(( $(date +%s) - t0 )) "$note")")
}

echo "=== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader || {
  echo "device check: no GPU (nvidia-smi failed)"
  exit 2
}
echo "bundle commit $(cat "$here/commit" 2>/dev/null || echo unknown), $(nproc) CPUs, $(ldd --version | head -1)"

# Libraries: the bundle's own (unpacked once), NCCL from Python's nvidia-nccl wheel, the
# toolkit's runtime and cuBLAS.
lib="$here/lib"
if [ ! -d "$lib" ]; then
  tar -C "$here" -xJf "$here/lib.tar.xz" 2>/dev/null || { lib=$(mktemp -d)/lib && tar -C "${lib%/lib}" -xJf "$here/lib.tar.xz"; } || {
    echo "device check: cannot unpack $here/lib.tar.xz"
    exit 2
  }
fi
nccl_dir=$(python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
dirs = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for d in dirs:
    hits = glob.glob(os.path.join(d, "nvidia", "nccl", "lib", "libnccl.so*"))
    if hits:
        print(os.path.dirname(hits[0]))
        break
PY
)
cuda_lib=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib; do
  if ls "$d"/libcublas.so* >/dev/null 2>&1; then cuda_lib=$d; break; fi
done
echo "NCCL from: ${nccl_dir:-NOT FOUND}; CUDA runtime and cuBLAS from: ${cuda_lib:-NOT FOUND}"
export LD_LIBRARY_PATH="$lib${nccl_dir:+:$nccl_dir}${cuda_lib:+:$cuda_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
missing=$(for f in "$here"/bin/* "$here"/tests/*; do ldd "$f" | grep "not found"; done | sort -u)
[ -z "$missing" ] || echo "device check: libraries not found: $missing"

# 1. GPU tests, one process each. GoogleTest names a failed or skipped test twice (as it ends, with
# its time, and in the closing list): the ones with a time are counted, and the first skipped
# names listed.
for t in "$here"/tests/*; do
  name=$(basename "$t")
  NOTE="" CUDA_LAUNCH_BLOCKING=1 step "$name" 150 "$t" --gtest_color=no
  log="$log_dir/$name.log"
  [ -f "$log" ] || continue
  pass=$(grep -c '^\[       OK \] .* ms)$' "$log")
  fail=$(grep -c '^\[  FAILED  \] .* ms)$' "$log")
  skip=$(grep -c '^\[  SKIPPED \] .* ms)$' "$log")
  summary[-1]="${summary[-1]}$pass passed, $fail failed, $skip skipped"
  if (( skip > 0 )); then
    skipped=$(grep '^\[  SKIPPED \] .* ms)$' "$log" | awk '{print $4}' | sort -u)
    summary[-1]="${summary[-1]} ($(head -n 4 <<<"$skipped" | tr '\n' ' ')$( (( skip > 4 )) && echo "and $((skip - 4)) more"))"
  fi
done

# 2. The command line: at float precision the same greedy tokens on the GPU as on the CPU's
# float tier (avx512, or avx2 where the CPU lacks it); the GPU's fast numerics may pick another
# expert at a routing near-tie, and are shown beside.
export here work=$(mktemp -d)
# The presets' checkpoints, each written aside and moved into place whole, in a step of their own
# (the benchmarks below read the bench one too).
make_models() {
  local preset
  for preset in tiny bench; do
    [ -d "$work/$preset" ] && continue
    rm -rf "$work/$preset.part"
    "$here/bin/daedalus" make-model --preset "$preset" --seed 7 --dtype bf16 --out "$work/$preset.part" >/dev/null &&
      mv "$work/$preset.part" "$work/$preset" && echo "made $work/$preset" || return 1
  done
}
compare() {
  local preset=$1 kv=$2 isa=avx512 d out
  grep -q avx512f /proc/cpuinfo || isa=avx2
  [ -d "$work/$preset" ] || { echo "no $preset checkpoint (the make-models step did not finish)"; return 1; }
  for d in "cpu --device cpu" "float --device cuda:0 --gpu-precision float" "fast --device cuda:0"; do
    out="$work/$preset.$kv.${d%% *}.jsonl"
    DAEDALUS_CPU_ISA=$isa "$here/bin/daedalus" run --model "$work/$preset" --prompt-ids 5,17,99,3,42,7,11 --max-new-tokens 16 \
      --temperature 0 --ignore-eos --kv-cache-tokens 4096 --kv-dtype "$kv" ${d#* } >"$out" || return 1
    echo "${d#* } --kv-dtype $kv (CPU tier $isa): $(cat "$out")"
  done
  cmp -s "$work/$preset.$kv.fast.jsonl" "$work/$preset.$kv.cpu.jsonl" || echo "(fast numerics: other tokens after a routing near-tie)"
  cmp -s "$work/$preset.$kv.cpu.jsonl" "$work/$preset.$kv.float.jsonl" && echo "same tokens at float precision" && return 0
  echo "tokens DIFFER at float precision"
  return 1
}
NOTE="" step make-models 60 make_models
for preset in tiny bench; do
  for kv in bf16 fp8; do
    NOTE="same greedy tokens as the CPU (float)" CUDA_LAUNCH_BLOCKING=1 step "run-$preset-$kv-cuda-vs-cpu" 90 compare "$preset" "$kv"
  done
done

# 3. Benchmarks, one part per process.
bench="$here/bin/daedalus-bench-gpu"
NOTE="" step bench-peak 60 "$bench" --only peak
summary[-1]="${summary[-1]}$(grep -o 'matrix product.*' "$log_dir/bench-peak.log" 2>/dev/null | head -1)"
NOTE="" step bench-mla 90 "$bench" --only mla
summary[-1]="${summary[-1]}$(grep -o '[0-9.]* TFLOP/s = *[0-9.]*% of the tensor peak' "$log_dir/bench-mla.log" 2>/dev/null | head -1) (MMA, bf16, 64 x 4K)"
NOTE="" step bench-experts 90 "$bench" --only experts
summary[-1]="${summary[-1]}$(grep -o 'best [0-9]*% of dense, [0-9]*% of the roofline' "$log_dir/bench-experts.log" 2>/dev/null | tail -1) at 4096 tokens"
NOTE="" step bench-e2e 120 "$bench" --only e2e --model "$work/bench" --batches 1,64
summary[-1]="${summary[-1]}$(grep -o 'batch  64: GPU *[0-9.]* tok/s.*' "$log_dir/bench-e2e.log" 2>/dev/null | head -1)"
NOTE="" step bench-e2e-fp8 90 "$bench" --only e2e --model "$work/bench" --batches 64 --kv-dtype fp8
summary[-1]="${summary[-1]}$(grep -o 'batch  64: GPU *[0-9.]* tok/s.*' "$log_dir/bench-e2e-fp8.log" 2>/dev/null | head -1)"
rm -rf "$work"

echo
echo "=== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(date -u +%Y-%m-%d), $(elapsed)s, logs in $log_dir)"
printf '%-34s %-8s %6s  %s\n' step status time notes
printf '%s\n' "${summary[@]}"
echo "$failures failure(s)"
exit "$failures"
