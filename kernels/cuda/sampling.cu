#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/sampling.h"

namespace daedalus::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ bool Before(float v, int64_t i, float best_v, int64_t best_i) {
  return v > best_v || (v == best_v && i < best_i);
}

__global__ void ArgmaxKernel(ArgmaxParams p) {
  __shared__ float vals[kThreads];
  __shared__ int64_t ids[kThreads];
  const float* row = p.logits + blockIdx.x * p.vocab;
  float best = -INFINITY;
  int64_t best_i = p.vocab;
  for (int64_t i = threadIdx.x; i < p.vocab; i += kThreads)
    if (Before(row[i], i, best, best_i)) best = row[i], best_i = i;
  vals[threadIdx.x] = best;
  ids[threadIdx.x] = best_i;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s && Before(vals[threadIdx.x + s], ids[threadIdx.x + s], vals[threadIdx.x], ids[threadIdx.x])) {
      vals[threadIdx.x] = vals[threadIdx.x + s];
      ids[threadIdx.x] = ids[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) p.out[blockIdx.x] = static_cast<int32_t>(ids[0] < p.vocab ? ids[0] : 0);
}

}  // namespace

absl::Status Argmax(const ArgmaxParams& p, cudaStream_t stream) {
  if (p.rows == 0) return absl::OkStatus();
  ArgmaxKernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  return DAEDALUS_CUDA_LAUNCH_STATUS("Argmax");
}

}  // namespace daedalus::cuda
