#!/usr/bin/env bash
# Builds, on a CPU machine with nvcc, what the GPU device check runs (`daedalus`,
# `daedalus-bench-gpu` and every GPU test binary the build registers, `ctest -L gpu`), and
# writes it with every shared library it needs that a bare GPU machine lacks into
# build/device-bundle/ (at most 60 MiB). The device needs only its driver, the CUDA toolkit
# (runtime, cuBLAS) and Python's nvidia-nccl wheel. The libraries travel as lib.tar.xz
# (OpenBLAS alone, with kernels for every x86 generation, is 36 MiB; all of them compress to
# about 13), which run.sh unpacks. Ends by checking the bundle (scripts/device/check-libs.sh).
# Usage: bash scripts/device-bundle.sh [--from BUILD_DIR] [--out DIR]
#   default: configure build-bundle/ for CUDA_ARCH (default 90, the H100/H200) and build there;
#   --from: build in an existing build folder as it is configured.
# Then ship build/device-bundle/ with the repository and run build/device-bundle/run.sh there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="" out="$root/build/device-bundle"
while [ $# -gt 0 ]; do
  case "$1" in
    --from) build="$(cd "$2" && pwd)"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "device-bundle: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$build" ]; then
  build="$root/build-bundle"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" >/dev/null
fi
device_has="$("$root/scripts/device/check-libs.sh" --pattern)"  # what the device's image has
cmake --build "$build" -j "$(nproc)" --target daedalus daedalus-bench-gpu gpu_tests
tests=$(ctest --test-dir "$build" -N -L gpu | awk '$1 == "Test" && $2 ~ /^#/ {print $3}')
[ -n "$tests" ] || { echo "device-bundle: $build registers no GPU tests (built without CUDA?)" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/bin" "$out/tests" "$out/lib"
for b in daedalus daedalus-bench-gpu; do install -m 755 -s "$build/bin/$b" "$out/bin/"; done
for t in $tests; do install -m 755 -s "$build/tests/$t" "$out/tests/"; done
# Every library a binary needs, by its soname, unless the device has it.
for f in "$out"/bin/* "$out"/tests/*; do
  ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r soname path; do
  [[ "$soname" =~ $device_has ]] && continue
  cp -L "$path" "$out/lib/$soname"
  strip --strip-unneeded "$out/lib/$soname"
done
n_libs=$(ls "$out/lib" | wc -l)
XZ_OPT=-T0 tar -C "$out" -cJf "$out/lib.tar.xz" lib
rm -rf "$out/lib"
install -m 755 "$root/scripts/device/run.sh" "$out/run.sh"
install -m 755 "$root/scripts/device/check-libs.sh" "$out/check-libs.sh"
git -C "$root" rev-parse --short HEAD >"$out/commit" 2>/dev/null || true
size=$(du -sb "$out" | cut -f1)
echo "device bundle: $out, $(( size / 1048576 )) MiB: $(echo $tests | wc -w) GPU tests, $n_libs libraries in lib.tar.xz"
(( size <= 60 * 1048576 )) || { echo "device-bundle: over 60 MiB" >&2; exit 1; }
"$out/check-libs.sh"
