// MLA attention in latent space (the absorbed form) over the paged latent cache, on the GPU.
// Every query row (one token of one sequence) has H heads; all heads share the sequence's
// cached rows [RMSNorm(c_kv) (kv_lora_rank) | k_pe (rope_dim)] in bf16. Per head:
//   s_t = (q_latent · c_kv_t + q_pe · k_pe_t) · scale,   o_latent = Σ_t softmax(s)_t · c_kv_t
// with float accumulation. The caller folds W_uk into q_latent before and W_uv into the
// output after (see worker/mla.cc). Rows see positions [0, kv_len[row]), so a prefill chunk
// may use it too (causal by its per-row kv_len).
//
// Schedule (plan first, then run): blocks of a head group × one KV split × one row; each block
// streams its split's cached rows through shared memory in tiles of 32 tokens with an online
// softmax. When rows × head groups cannot fill the device (small batches), the sequence is
// split into n_splits parts whose partial results a second kernel combines by their
// log-sum-exp. Two kernels:
//  - CUDA cores (any shape): 16 heads per block, float q, float products.
//  - tensor cores (mla_decode_tc.cu; heads a multiple of 32, kv_lora_rank 128/256/512,
//    kv_lora_rank + rope_dim a multiple of 32 — DeepSeek-V2/V3): 32 heads per block, bf16
//    WMMA with float accumulation, q and the softmax weights rounded to bf16 (as FlashMLA
//    does), the next tile loaded asynchronously while this one is computed. With 128 heads
//    decode is compute-bound (~240 FLOP per cached byte), so tensor cores are what moves
//    the bandwidth figure.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace daedalus::cuda {

struct MlaDecodePlan {
  bool tensor_cores = false;
  int heads_per_block = 16;
  int n_splits = 1;
  int64_t split_len = 0;        // tokens per split, a multiple of the tile
  size_t workspace_bytes = 0;   // partial outputs, when n_splits > 1
};

struct MlaDecodeParams {
  const float* q_latent = nullptr;   // [n_rows, heads, kv_lora_rank]
  const float* q_pe = nullptr;       // row r, head h: q_pe + r·q_pe_row_stride + h·q_pe_head_stride (rotated)
  int64_t q_pe_row_stride = 0;
  int64_t q_pe_head_stride = 0;
  const uint16_t* pool = nullptr;    // bf16 bits [total_pages][n_layers][page_size][kv_lora_rank + rope_dim]
  int64_t layer = 0;
  int64_t n_layers = 0;
  int64_t page_size = 0;
  const int32_t* page_table = nullptr;  // [n_rows, max_pages]: the row's sequence's pages
  int64_t max_pages = 0;
  const int32_t* kv_len = nullptr;   // [n_rows]: positions visible to the row (>= 1)
  int64_t n_rows = 0;
  int64_t heads = 0;
  int64_t kv_lora_rank = 0;          // multiple of 2, at most 1024
  int64_t rope_dim = 0;              // multiple of 2
  float scale = 1.0f;                // softmax scale, YaRN mscale² included
  float* out = nullptr;              // [n_rows, heads, kv_lora_rank]
  void* workspace = nullptr;         // plan.workspace_bytes of device memory
};

// `max_kv_len`: the longest kv_len of the batch; `sm_count`: the device's multiprocessors.
// Tensor cores where the shapes allow it and `allow_tensor_cores`.
MlaDecodePlan PlanMlaDecode(int64_t n_rows, int64_t heads, int64_t kv_lora_rank, int64_t rope_dim, int64_t max_kv_len,
                            int sm_count, bool allow_tensor_cores = true);
absl::Status MlaDecode(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream);

// The tensor-core kernel (mla_decode_tc.cu); MlaDecode calls it when plan.tensor_cores.
bool MlaDecodeFitsTensorCores(int64_t heads, int64_t kv_lora_rank, int64_t rope_dim);
absl::Status MlaDecodeTensorCores(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream);
// Combines split partials (both kernels write the same layout).
absl::Status MlaDecodeCombine(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream);

}  // namespace daedalus::cuda
