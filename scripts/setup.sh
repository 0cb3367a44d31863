#!/usr/bin/env bash
# Installs the Debian packages Daedalus builds with. Idempotent; silent when all are present.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config xz-utils
  libabsl-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
  libopenblas-openmp-dev libdnnl-dev ocl-icd-opencl-dev libopenmpi-dev openmpi-bin libyaml-cpp-dev libucx-dev ucx-utils iproute2
  slurmctld slurmd slurm-client munge
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libcpp-httplib-dev libssl-dev openssl libpcre2-dev
  python3 python3-numpy python3-grpcio python3-venv python3-pip
  clang-14 libclang-rt-14-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "setup: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
