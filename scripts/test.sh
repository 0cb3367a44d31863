#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test.
#   scripts/test.sh                      every test (Release build in build/), then the hardening
#                                        checks: each fuzz target for 20 s (build-fuzz/), the unit
#                                        tests under ASan+UBSan (build-asan/), the coordinator's
#                                        concurrency test under TSan (build-tsan/) and a 20 s soak
#   scripts/test.sh --quick              every test, without the hardening checks
#   scripts/test.sh --sanitize address   ASan+UBSan build in build-asan/, unit and integration tests
#   scripts/test.sh --sanitize thread    TSan build in build-tsan/, unit and integration tests
# Each stage prints how long it took. CI (.ci/run) runs the first form.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
sanitize="" quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) sanitize="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "usage: scripts/test.sh [--quick | --sanitize address|thread]" >&2; exit 2 ;;
  esac
done
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
jobs="$(nproc)"
[ "$jobs" -gt 2 ] && jobs=2  # a shared 2-core machine is the reference
stage_start=$SECONDS
stage() {  # NAME: reports the previous stage's time, names the next
  echo "test.sh: $(( SECONDS - stage_start )) s; next: $1" >&2
  stage_start=$SECONDS
}
# Sanitizer builds: ASan+UBSan (every UBSan finding fatal) or TSan, of the CPU path (the CUDA
# code is checked on a GPU by scripts/device-check.sh). Suppressions live in scripts/sanitizers/,
# each with the reason it is not our bug.
# TSan: ignore_noninstrumented_modules=1 because Debian's gRPC, protobuf and Abseil are not built
# with TSan, so their internal synchronisation is invisible and every access they make to their
# own state looks racy (826 reports in one run of server_concurrency_test, all inside gRPC and
# protobuf). With it TSan checks what is compiled with TSan: our code. OpenMP (libgomp) is
# uninstrumented too, so TSan builds run the tests with one OpenMP thread (tests/CMakeLists.txt).
sanitizer_env() {
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1 ignore_noninstrumented_modules=1 suppressions=$root/scripts/sanitizers/tsan.supp}"
  # UCX's libucm patches mmap and madvise when it loads; TSan's interceptors then crash in the
  # madvise glibc makes at thread exit. Without the hooks UCX only skips its registration cache.
  export UCX_MEM_MMAP_HOOK_MODE="${UCX_MEM_MMAP_HOOK_MODE:-none}"
}

"$root/scripts/setup.sh"
if [ -n "$sanitize" ]; then
  case "$sanitize" in address) dir=build-asan ;; thread) dir=build-tsan ;; *) echo "unknown sanitizer $sanitize" >&2; exit 2 ;; esac
  BUILD_DIR="$root/$dir" "$root/scripts/build.sh" -DDAEDALUS_SANITIZE="$sanitize" -DDAEDALUS_CUDA=OFF
  "$root/scripts/test-venv.sh" "$root/$dir/test-venv"
  sanitizer_env
  ctest --test-dir "$root/$dir" --output-on-failure -j 2
  exit 0
fi

stage "Release build"
"$root/scripts/build.sh"
"$root/scripts/test-venv.sh" "$root/build/test-venv"
stage "every test"
rc=0
ctest --test-dir "$root/build" --output-on-failure -j 2 | tee "$root/build/ctest.log" || rc=$?
# Tests that could not run here (the GPU tests without a GPU, the Slurm test without root), by name.
echo "skipped here: $(grep -oE '[A-Za-z0-9_]+ \.+\*+Skipped' "$root/build/ctest.log" | cut -d' ' -f1 | tr '\n' ' ')"
[ "$rc" -eq 0 ] || exit "$rc"
[ "$quick" -eq 1 ] && exit 0

stage "fuzzing, 20 s per target"
FUZZ_BUILD_JOBS=$jobs "$root/scripts/fuzz.sh" 20
stage "unit tests under ASan+UBSan"
# -O1: quicker to compile than -O3; the unit tests run in under 2 minutes with it.
cmake -S "$root" -B "$root/build-asan" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O1 \
    -DDAEDALUS_SANITIZE=address -DDAEDALUS_CUDA=OFF >/dev/null
cmake --build "$root/build-asan" --target unit_tests -j "$jobs"
(sanitizer_env && ctest --test-dir "$root/build-asan" -L unit --output-on-failure -j 2)
stage "the coordinator's concurrency tests under TSan"
cmake -S "$root" -B "$root/build-tsan" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O1 \
    -DDAEDALUS_SANITIZE=thread -DDAEDALUS_CUDA=OFF >/dev/null
cmake --build "$root/build-tsan" --target cluster_concurrency_test server_concurrency_test -j "$jobs"
(sanitizer_env && ctest --test-dir "$root/build-tsan" -R '^(cluster|server)_concurrency_test$' --output-on-failure)
stage "a 20 s soak"
DAEDALUS_BIN="$root/build/bin/daedalus" "$root/scripts/soak.sh" 20
stage "done"
