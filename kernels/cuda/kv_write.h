// Stores latent rows (RMSNorm(c_kv) then rotated k_pe, kv_lora_rank + qk_rope_head_dim
// floats) into the paged latent cache in device memory, as bf16 or in core/kv_row.h's FP8
// layout (the same bytes as the CPU's PagedKvCache::Write: per 128 latent values scale =
// max |v| / 448 and codes e4m3(v / scale), saturating, ties to even; then k_pe in bf16). The
// pool has the layout of worker/kv_cache.h: [page][layer][slot][row bytes], so page ids from
// the host PagedKvCache index it.
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
  void* pool = nullptr;             // [total_pages][n_layers][page_size][row bytes]
  bool fp8 = false;                 // kF8E4M3 rows, else bf16
  int64_t layer = 0;
  int64_t n_layers = 0;
  int64_t page_size = 0;
  int64_t kv_lora_rank = 0;
  int64_t rope_dim = 0;
};

absl::Status KvWrite(const KvWriteParams& p, cudaStream_t stream);

}  // namespace daedalus::cuda
