#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test.
#   scripts/test.sh                      all tests, Release build in build/
#   scripts/test.sh --sanitize address   ASan+UBSan build in build-asan/
#   scripts/test.sh --sanitize thread    TSan build in build-tsan/
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
sanitize=""
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) sanitize="$2"; shift 2 ;;
    *) echo "usage: scripts/test.sh [--sanitize address|thread]" >&2; exit 2 ;;
  esac
done
"$root/scripts/setup.sh"
if [ -n "$sanitize" ]; then
  case "$sanitize" in address) dir=build-asan ;; thread) dir=build-tsan ;; *) echo "unknown sanitizer $sanitize" >&2; exit 2 ;; esac
  BUILD_DIR="$root/$dir" "$root/scripts/build.sh" -DDAEDALUS_SANITIZE="$sanitize"
  build="$root/$dir"
else
  "$root/scripts/build.sh"
  build="$root/build"
fi
"$root/scripts/test-venv.sh" "$build/test-venv"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
ctest --test-dir "$build" --output-on-failure -j 2
