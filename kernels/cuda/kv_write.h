// Stores latent rows (RMSNorm(c_kv) then rotated k_pe, kv_lora_rank + qk_rope_head_dim
// floats) into the paged latent cache in device memory, as bf16. The pool has the layout of
// worker/kv_cache.h: [page][layer][slot][dim], so page ids from the host PagedKvCache index it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace daedalus::cuda {

struct KvWriteParams {
  const float* latent = nullptr;    // [n_tokens, latent_stride], the first dim of each row stored
  int64_t latent_stride = 0;
  int64_t n_tokens = 0;
  const int32_t* pages = nullptr;   // [n_tokens]: page of each token's position (device)
  const int32_t* slots = nullptr;   // [n_tokens]: slot in that page (device)
  uint16_t* pool = nullptr;         // bf16 bits, [total_pages][n_layers][page_size][dim]
  int64_t layer = 0;
  int64_t n_layers = 0;
  int64_t page_size = 0;
  int64_t dim = 0;                  // kv_lora_rank + qk_rope_head_dim
};

absl::Status KvWrite(const KvWriteParams& p, cudaStream_t stream);

}  // namespace daedalus::cuda
