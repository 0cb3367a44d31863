#!/usr/bin/env bash
# Checks a device bundle: every library each binary needs resolves inside the bundle's lib/
# (unpacked from lib.tar.xz into a temporary folder where lib/ is absent) or is one a GPU
# machine's image provides. With --pattern, prints that set as a regex of sonames.
# Usage: check-libs.sh [--pattern] [BUNDLE_DIR]      (default: the folder this script is in)
set -uo pipefail
# glibc, the GCC runtime, the driver (libcuda), the CUDA toolkit's runtime and cuBLAS, and NCCL
# (from the nvidia-nccl wheel, which run.sh puts on the library path).
device_has='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libnccl)\.so'
if [ "${1:-}" = --pattern ]; then echo "$device_has"; exit 0; fi
bundle="$(cd "${1:-$(dirname "$0")}" && pwd)"
lib="$bundle/lib"
if [ ! -d "$lib" ]; then
  unpacked=$(mktemp -d)
  trap 'rm -rf "$unpacked"' EXIT
  tar -C "$unpacked" -xJf "$bundle/lib.tar.xz" || { echo "check-libs: no lib/ and no readable lib.tar.xz in $bundle"; exit 1; }
  lib="$unpacked/lib"
fi
bad=0 n=0
for f in "$bundle"/bin/* "$bundle"/tests/*; do
  n=$((n + 1))
  while read -r soname arrow path _; do
    [ "$arrow" = "=>" ] || continue
    if [ "$path" = "not" ]; then
      [[ "$soname" =~ $device_has ]] && continue  # e.g. libcuda on a machine without a driver
      echo "check-libs: $(basename "$f"): $soname not found"; bad=$((bad + 1)); continue
    fi
    case "$path" in "$lib"/*) continue ;; esac
    [[ "$soname" =~ $device_has ]] && continue
    echo "check-libs: $(basename "$f"): $soname resolves outside the bundle ($path) and is not on the device"
    bad=$((bad + 1))
  done < <(LD_LIBRARY_PATH="$lib" ldd "$f")
done
echo "check-libs: $n binaries, $(ls "$lib" | wc -l) bundled libraries, $bad problem(s)"
[ "$bad" -eq 0 ] && [ "$n" -gt 0 ]
