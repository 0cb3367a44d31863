#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang-14 (ASan + UBSan, every finding fatal)
# in build-fuzz/, then runs each for SECONDS (default 30) on its corpus, one after another on one
# core. Every committed input (seeds and the regression inputs of past crashes) runs first.
# Prints executions and crashes per target; exits 1 when a target crashed (the input is kept in
# build-fuzz/crashes/TARGET/, to be fixed and then added to tests/fuzz/corpus/TARGET/).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-30}"
shift || true
build="${FUZZ_BUILD_DIR:-$root/build-fuzz}"
"$root/scripts/setup.sh"
CC=clang-14 CXX=clang++-14 cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDAEDALUS_FUZZ=ON -DDAEDALUS_CUDA=OFF >/dev/null
cmake --build "$build" --target fuzz_targets -j "${FUZZ_BUILD_JOBS:-2}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for src in "$root"/tests/fuzz/*_fuzz.cc; do targets+=("$(basename "$src" .cc)"); done
fi
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
failed=0
summary=()
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t" crashes="$build/crashes/$t" log="$build/logs/$t.log"
  mkdir -p "$corpus" "$crashes" "$(dirname "$log")"
  dict=()
  [ -f "$root/tests/fuzz/$t.dict" ] && dict=("-dict=$root/tests/fuzz/$t.dict")
  # New inputs go to build-fuzz/corpus; tests/fuzz/corpus is read for seeds and regressions.
  rc=0
  "$build/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -use_value_profile=1 \
      -print_final_stats=1 -artifact_prefix="$crashes/" "${dict[@]}" "$corpus" "$root/tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  # libFuzzer also writes slow-unit-* for an input that took over 10 s, with exit 0: on a shared
  # machine a stall of the whole VM does that (a 58 ms input read 19 s once). A real hang is a
  # timeout-* (-timeout=10) and a non-zero exit, and fails.
  n_crashes="$(find "$crashes" -type f ! -name 'slow-unit-*' | wc -l)"
  if [ "$rc" -ne 0 ] || [ "$n_crashes" -gt 0 ]; then
    failed=1
    echo "fuzz: $t FAILED (exit $rc); the input is in $crashes/; log $log:" >&2
    grep -E "ERROR: |runtime error|expected |SUMMARY|#[0-9]+ 0x" "$log" | head -30 >&2 || true
  fi
  summary+=("$(printf '%-24s %8ss %14s executions %6s crashes  corpus %s' "$t" "$seconds" "${execs:-?}" "$n_crashes" "$(ls "$corpus" | wc -l)")")
done
printf '%s\n' "${summary[@]}"
exit "$failed"
