#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/rope.h"

namespace daedalus::cuda {
namespace {

// One block per token; threads over (head, pair).
__global__ void RopeKernel(RopeParams p) {
  const int64_t t = blockIdx.x, pairs = p.dim / 2;
  const double pos = static_cast<double>(p.positions[t]);
  for (int64_t j = threadIdx.x; j < p.heads * pairs; j += blockDim.x) {
    const int64_t h = j / pairs, i = j % pairs;
    const double angle = pos * p.inv_freq[i];
    const float c = static_cast<float>(cos(angle) * p.mscale), s = static_cast<float>(sin(angle) * p.mscale);
    float* v = p.v + t * p.token_stride + h * p.head_stride + 2 * i;
    const float a = v[0], b = v[1];
    v[0] = a * c - b * s;
    v[1] = a * s + b * c;
  }
}

}  // namespace

absl::Status RotateInterleaved(const RopeParams& p, cudaStream_t stream) {
  if (p.n_tokens == 0) return absl::OkStatus();
  RopeKernel<<<static_cast<unsigned>(p.n_tokens), 128, 0, stream>>>(p);
  return DAEDALUS_CUDA_LAUNCH_STATUS("RotateInterleaved");
}

}  // namespace daedalus::cuda
