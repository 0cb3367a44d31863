// MLA attention for a prefill slice on the GPU, in the naive form (worker/mla.cc's
// NaiveSlice): the slice's sequence's latent rows [0, start_pos + n_tokens) are read from the
// paged cache, decompressed by kv_b_proj into per-head k_nope and v, then per head
//   P = causal softmax((q_nope · k_nopeᵀ + q_pe · k_peᵀ) · scale),  o = P · v
// with float GEMMs (cuBLAS) so the slice matches the CPU to float rounding. Heads go in chunks
// so that the score matrices stay within a few hundred MiB for long prompts.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/linear.h"

namespace daedalus::cuda {

struct MlaPrefillParams {
  const float* q = nullptr;          // [n_tokens, heads, qk_nope + rope] (rotated), rows q_row_stride apart
  int64_t q_row_stride = 0;
  int64_t n_tokens = 0;
  int64_t start_pos = 0;             // position of the slice's first token; its latents are cached
  const void* pool = nullptr;        // [total_pages][n_layers][page_size][row bytes] (kernels/cuda/kv_row.cuh)
  bool kv_fp8 = false;               // kF8E4M3 rows (read exactly, code · scale), else bf16
  int64_t layer = 0;
  int64_t n_layers = 0;
  int64_t page_size = 0;
  const int32_t* pages = nullptr;    // the sequence's page ids (device)
  const uint16_t* kv_b_proj = nullptr;  // bf16 [heads · (qk_nope + v_head), kv_lora_rank]
  int64_t heads = 0;
  int64_t qk_nope = 0;
  int64_t rope = 0;
  int64_t v_head = 0;
  int64_t kv_lora_rank = 0;
  float scale = 1.0f;
  float* out = nullptr;              // [n_tokens, heads, v_head], rows out_row_stride apart
  int64_t out_row_stride = 0;
  // Heads go in chunks whose scores, and whose decompressed keys and values, each stay within
  // this many floats (at least one head a chunk).
  int64_t chunk_floats = int64_t{64} << 20;
};

struct MlaPrefillWorkspace {
  DeviceBuffer latent, kv, scores;
  LinearWorkspace linear;
};

absl::Status MlaPrefill(cublasHandle_t cublas, const MlaPrefillParams& p, MlaPrefillWorkspace& ws, cudaStream_t stream);

}  // namespace daedalus::cuda
