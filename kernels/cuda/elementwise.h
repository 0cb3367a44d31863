// Small element-wise ops of the forward pass on the GPU: the embedding lookup and the
// residual add, and row gathers. (Each a few lines; kept in one file to keep nvcc's work small.)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace daedalus::cuda {

struct EmbeddingParams {
  const void* table = nullptr;       // [vocab, hidden], bf16 bits or float
  bool table_bf16 = true;
  const int32_t* token_ids = nullptr;  // [n_tokens] (device)
  int64_t n_tokens = 0;
  int64_t hidden = 0;
  float* out = nullptr;              // [n_tokens, hidden]
};
absl::Status Embedding(const EmbeddingParams& p, cudaStream_t stream);

// Gather: dst[i, :width] = src[rows[i], :width]; scatter: dst[rows[i], :width] = src[i, :width].
struct CopyRowsParams {
  const float* src = nullptr;
  int64_t src_stride = 0;
  float* dst = nullptr;
  int64_t dst_stride = 0;
  const int32_t* rows = nullptr;  // [n_rows] (device)
  int64_t n_rows = 0;
  int64_t width = 0;
  bool scatter = false;
};
absl::Status CopyRows(const CopyRowsParams& p, cudaStream_t stream);

// out[i] = bf16(in[i]) (round to nearest even) for n floats.
absl::Status ToBf16(const float* in, uint16_t* out, int64_t n, cudaStream_t stream);
// out = bf16(in) and lo = bf16(in − out): in ≈ out + lo to about 2^-16 relative.
absl::Status ToBf16Split(const float* in, uint16_t* out, uint16_t* lo, int64_t n, cudaStream_t stream);

// y[i] += x[i] for n floats.
absl::Status AddInPlace(float* y, const float* x, int64_t n, cudaStream_t stream);

}  // namespace daedalus::cuda
