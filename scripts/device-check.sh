#!/usr/bin/env bash
# The GPU device check on one machine that has both a GPU and this project's build packages
# (scripts/setup.sh): makes the device bundle (scripts/device-bundle.sh, for this GPU's
# architecture) and runs it (build/device-bundle/run.sh: every GPU test the bundle holds,
# `run --device cuda:0` against the CPU, the benchmarks, a summary). Where the GPU machine has
# no build packages, make the bundle elsewhere and ship it (README, "GPU").
# Usage: bash scripts/device-check.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .') || {
  echo "device-check: no GPU (nvidia-smi failed)" >&2
  exit 2
}
"$root/scripts/setup.sh"
CUDA_ARCH="${arch:-90}" "$root/scripts/device-bundle.sh"
exec "$root/build/device-bundle/run.sh"
