#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/rmsnorm.h"

namespace daedalus::cuda {
namespace {

__global__ void RmsNormKernel(RmsNormParams p) {
  __shared__ float scratch[32];
  const float* x = p.x + blockIdx.x * p.x_stride;
  float* y = p.y + blockIdx.x * p.y_stride;
  float sum = 0;
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) sum += x[i] * x[i];
  sum = BlockSum(sum, scratch);
  const float inv = 1.0f / sqrtf(sum / static_cast<float>(p.n) + p.eps);
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) y[i] = x[i] * inv * p.gamma[i];
}

}  // namespace

absl::Status RmsNorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return absl::OkStatus();
  const int threads = p.n >= 1024 ? 1024 : (p.n >= 256 ? 256 : 128);
  RmsNormKernel<<<static_cast<unsigned>(p.rows), threads, 0, stream>>>(p);
  return DAEDALUS_CUDA_LAUNCH_STATUS("RmsNorm");
}

}  // namespace daedalus::cuda
