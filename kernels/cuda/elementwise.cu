#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise.h"

namespace daedalus::cuda {
namespace {

__global__ void EmbeddingKernel(EmbeddingParams p) {
  const int64_t t = blockIdx.x, row = p.token_ids[t];
  float* out = p.out + t * p.hidden;
  for (int64_t i = threadIdx.x; i < p.hidden; i += blockDim.x) {
    out[i] = p.table_bf16 ? Bf16Bits(static_cast<const uint16_t*>(p.table)[row * p.hidden + i])
                          : static_cast<const float*>(p.table)[row * p.hidden + i];
  }
}

__global__ void AddKernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

__global__ void CopyRowsKernel(CopyRowsParams p) {
  const int64_t i = blockIdx.x, r = p.rows[i];
  const float* src = p.src + (p.scatter ? i : r) * p.src_stride;
  float* dst = p.dst + (p.scatter ? r : i) * p.dst_stride;
  for (int64_t j = threadIdx.x; j < p.width; j += blockDim.x) dst[j] = src[j];
}

__global__ void ToBf16Kernel(const float* in, uint16_t* out, uint16_t* lo, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint16_t hi = ToBf16Bits(in[i]);
    out[i] = hi;
    if (lo != nullptr) lo[i] = ToBf16Bits(in[i] - Bf16Bits(hi));
  }
}

}  // namespace

absl::Status ToBf16Split(const float* in, uint16_t* out, uint16_t* lo, int64_t n, cudaStream_t stream) {
  if (n == 0) return absl::OkStatus();
  const int blocks = static_cast<int>(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
  ToBf16Kernel<<<blocks, 256, 0, stream>>>(in, out, lo, n);
  return DAEDALUS_CUDA_LAUNCH_STATUS("ToBf16");
}

absl::Status ToBf16(const float* in, uint16_t* out, int64_t n, cudaStream_t stream) {
  return ToBf16Split(in, out, nullptr, n, stream);
}

absl::Status CopyRows(const CopyRowsParams& p, cudaStream_t stream) {
  if (p.n_rows == 0) return absl::OkStatus();
  CopyRowsKernel<<<static_cast<unsigned>(p.n_rows), 256, 0, stream>>>(p);
  return DAEDALUS_CUDA_LAUNCH_STATUS("CopyRows");
}

absl::Status Embedding(const EmbeddingParams& p, cudaStream_t stream) {
  if (p.n_tokens == 0) return absl::OkStatus();
  EmbeddingKernel<<<static_cast<unsigned>(p.n_tokens), 256, 0, stream>>>(p);
  return DAEDALUS_CUDA_LAUNCH_STATUS("Embedding");
}

absl::Status AddInPlace(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return absl::OkStatus();
  const int blocks = static_cast<int>(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
  AddKernel<<<blocks, 256, 0, stream>>>(y, x, n);
  return DAEDALUS_CUDA_LAUNCH_STATUS("AddInPlace");
}

}  // namespace daedalus::cuda
