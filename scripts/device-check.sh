#!/usr/bin/env bash
# The GPU device check (issue 5), for a machine with an NVIDIA GPU, CUDA under /usr/local/cuda
# and the Debian packages of scripts/setup.sh. Within 8 minutes on one GPU it:
#   1. builds with CUDA for this GPU's architecture (build-gpu/),
#   2. runs every GPU test (ctest -R cuda): each kernel against the CPU kernels on DeepSeek-V3
#      and `tiny` shapes, the NCCL transport, and whole `tiny` / `bench` forwards on the GPU
#      against the CPU engine (same greedy tokens, logits within 0.1),
#   3. checks `daedalus run --device cuda:0` against `--device cpu` from the command line,
#   4. runs the GPU benchmarks (build-gpu/bin/daedalus-bench-gpu): MLA decode bandwidth
#      against peak, grouped expert GEMM against dense cuBLAS, end-to-end decode tokens/s.
# Usage: bash scripts/device-check.sh      (BUILD_DIR to build elsewhere)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
start=$(date +%s)
budget=${DEVICE_CHECK_SECONDS:-480}
left() { echo $(( budget - ($(date +%s) - start) )); }
stage() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }
failures=0

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader || { echo "device-check: no GPU (nvidia-smi failed)"; exit 2; }
/usr/local/cuda/bin/nvcc --version | tail -2
nproc

stage "setup and build (CUDA on)"
"$root/scripts/setup.sh"
build="${BUILD_DIR:-$root/build-gpu}"
# This GPU's architecture only, to keep the build short (the default build targets 80 and 90).
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${arch:-90}" >/dev/null || exit 1
timeout "$(left)" cmake --build "$build" -j "$(nproc)" --target daedalus daedalus-bench-gpu cuda_ops_test cuda_mla_test \
  cuda_expert_test cuda_model_test cuda_nccl_transport_test || { echo "device-check: build failed"; exit 1; }

stage "GPU tests (ctest -R cuda)"
log="$build/device-check-tests.log"
OMP_NUM_THREADS=$(nproc) timeout "$(left)" ctest --test-dir "$build" -R cuda --output-on-failure -V --timeout 300 >"$log" 2>&1
rc=$?
grep -aE "^[0-9]+: \[ +(OK|FAILED|SKIPPED) +\]|largest|Failure|Expected|Which is|tests passed|tests failed" "$log"
if [ "$rc" -ne 0 ]; then echo "device-check: GPU tests FAILED (rc $rc; full log in $log)"; failures=$((failures + 1)); fi

stage "command line: run --device cuda:0 against --device cpu (tiny)"
tiny=$(mktemp -d)
"$build/bin/daedalus" make-model --preset tiny --seed 7 --dtype bf16 --out "$tiny/m" >/dev/null
for d in cpu cuda:0; do
  timeout 60 "$build/bin/daedalus" run --model "$tiny/m" --prompt-ids 5,17,99,3,42 --max-new-tokens 12 --temperature 0 \
    --ignore-eos --device "$d" --kv-cache-tokens 4096 > "$tiny/$d.jsonl" || failures=$((failures + 1))
  echo "$d: $(cat "$tiny/$d.jsonl")"
done
if cmp -s "$tiny/cpu.jsonl" "$tiny/cuda:0.jsonl"; then echo "same tokens"; else echo "device-check: tokens DIFFER"; failures=$((failures + 1)); fi

stage "GPU benchmarks"
bench=$(mktemp -d)
"$build/bin/daedalus" make-model --preset bench --seed 7 --dtype bf16 --out "$bench/m" >/dev/null
OMP_NUM_THREADS=$(nproc) timeout "$(left)" "$build/bin/daedalus-bench-gpu" --model "$bench/m" --batches 1,64 \
  || { echo "device-check: benchmarks did not finish"; failures=$((failures + 1)); }
rm -rf "$tiny" "$bench"

stage "done in $(( $(date +%s) - start ))s with $failures failure(s)"
[ "$failures" -eq 0 ]
