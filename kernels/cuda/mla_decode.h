// MLA attention in latent space (the absorbed form) over the paged latent cache, on the GPU.
// Every query row (one token of one sequence) has H heads; all heads share the sequence's
// cached rows [RMSNorm(c_kv) (kv_lora_rank) | k_pe (rope_dim)], bf16 or FP8
// (kernels/cuda/kv_row.cuh). Per head:
//   s_t = (q_latent · c_kv_t + q_pe · k_pe_t) · scale,   o_latent = Σ_t softmax(s)_t · c_kv_t
// with float accumulation. The caller folds W_uk into q_latent before and W_uv into the
// output after (see worker/mla.cc). Rows see positions [0, kv_len[row]), so a prefill chunk
// may use it too (causal by its per-row kv_len).
//
// Schedule (plan first, then run): blocks of a head group × one KV split × one row; each block
// streams its split's cached rows through shared memory in tiles of 32 tokens with an online
// softmax. When rows × head groups cannot fill the device (small batches), the sequence is
// split into n_splits parts whose partial results a second kernel combines by their
// log-sum-exp. Three kernels, from the most general to the fastest:
//  - kCudaCores (any shape, bf16 or FP8 rows): 16 heads per block, float q, float products;
//    FP8 rows are read exactly (code · scale), so this one matches the CPU's float tiers.
//  - kWmma (mla_decode_tc.cu; bf16 rows, heads a multiple of 32, kv_lora_rank 128/256/512,
//    kv_lora_rank + rope_dim a multiple of 32): 32 heads per block, bf16 WMMA.
//  - kMma (mla_decode_mma.cu; bf16 or FP8 rows, kv_lora_rank 256 or 512, rope_dim a multiple
//    of 32): FlashMLA's structure on mma.sync, 64 heads per block (16 when heads <= 16).
//  The tensor-core kernels round q and the softmax weights to bf16 (as FlashMLA does), and FP8
//  rows to bf16 after scaling. With 128 heads decode is compute-bound (~240 FLOP per cached
//  byte), so tensor cores are what moves the bandwidth figure.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace daedalus::cuda {

enum class MlaDecodeKernel { kCudaCores, kWmma, kMma };  // general to fast
const char* MlaDecodeKernelName(MlaDecodeKernel k);      // "CUDA cores", "WMMA", "MMA"

struct MlaDecodePlan {
  MlaDecodeKernel kernel = MlaDecodeKernel::kCudaCores;
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
  const void* pool = nullptr;        // [total_pages][n_layers][page_size][row bytes] (kernels/cuda/kv_row.cuh)
  bool kv_fp8 = false;               // kF8E4M3 rows, else bf16
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
// The fastest kernel, up to `best`, that takes the shapes and the cache dtype.
MlaDecodePlan PlanMlaDecode(int64_t n_rows, int64_t heads, int64_t kv_lora_rank, int64_t rope_dim, int64_t max_kv_len,
                            bool kv_fp8, int sm_count, MlaDecodeKernel best = MlaDecodeKernel::kMma);
absl::Status MlaDecode(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream);

// The tensor-core kernels (mla_decode_tc.cu, mla_decode_mma.cu); MlaDecode calls them.
bool MlaDecodeFitsWmma(int64_t heads, int64_t kv_lora_rank, int64_t rope_dim, bool kv_fp8);
absl::Status MlaDecodeWmma(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream);
bool MlaDecodeFitsMma(int64_t heads, int64_t kv_lora_rank, int64_t rope_dim, bool kv_fp8);
int MlaDecodeMmaHeadsPerBlock(int64_t heads);
absl::Status MlaDecodeMma(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream);
// Combines split partials (every kernel writes the same layout).
absl::Status MlaDecodeCombine(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream);

}  // namespace daedalus::cuda
