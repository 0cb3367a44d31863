#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kv_write.h"

namespace daedalus::cuda {
namespace {

__global__ void KvWriteKernel(KvWriteParams p) {
  const int64_t t = blockIdx.x;
  uint16_t* row = p.pool + ((static_cast<int64_t>(p.pages[t]) * p.n_layers + p.layer) * p.page_size + p.slots[t]) * p.dim;
  const float* in = p.latent + t * p.latent_stride;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) row[i] = ToBf16Bits(in[i]);
}

}  // namespace

absl::Status KvWrite(const KvWriteParams& p, cudaStream_t stream) {
  if (p.n_tokens == 0) return absl::OkStatus();
  KvWriteKernel<<<static_cast<unsigned>(p.n_tokens), 128, 0, stream>>>(p);
  return DAEDALUS_CUDA_LAUNCH_STATUS("KvWrite");
}

}  // namespace daedalus::cuda
