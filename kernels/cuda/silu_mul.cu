#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/silu_mul.h"

namespace daedalus::cuda {
namespace {

__global__ void SiluMulKernel(SiluMulParams p) {
  const int64_t n = p.rows * p.width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.width, j = i % p.width;
    const float g = p.gate_up[r * 2 * p.width + j], u = p.gate_up[r * 2 * p.width + p.width + j];
    const float v = g / (1.0f + expf(-g)) * u;
    if (p.out_f32 != nullptr) p.out_f32[i] = v;
    if (p.out_bf16 != nullptr) {
      const uint16_t hi = ToBf16Bits(v);
      p.out_bf16[i] = hi;
      if (p.out_bf16_lo != nullptr) p.out_bf16_lo[i] = ToBf16Bits(v - Bf16Bits(hi));
    }
  }
}

}  // namespace

absl::Status SiluMul(const SiluMulParams& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.width;
  if (n == 0) return absl::OkStatus();
  const int blocks = static_cast<int>(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
  SiluMulKernel<<<blocks, 256, 0, stream>>>(p);
  return DAEDALUS_CUDA_LAUNCH_STATUS("SiluMul");
}

}  // namespace daedalus::cuda
