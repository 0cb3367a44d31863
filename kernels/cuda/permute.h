// Token permutation for the routed experts on the GPU. Permute groups the (token, slot) pairs
// by expert, contiguous per expert and, within an expert, in token order (the CPU's
// GroupLocally order), and copies each pair's activation row there as bf16 (the expert GEMMs'
// input). Unpermute is the combine: out[t] = Σ_k weights[t, k] · y[row of (t, k)], summed in
// slot order (ascending expert id, as the CPU does), plus an optional shared-expert row.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/device.h"

namespace daedalus::cuda {

struct PermuteParams {
  const int32_t* expert_ids = nullptr;  // [n_tokens, topk], experts 0 .. n_experts-1 (device)
  int64_t n_tokens = 0;
  int64_t topk = 0;
  int64_t n_experts = 0;
  const float* x = nullptr;             // [n_tokens, hidden]
  int64_t hidden = 0;
  // Outputs (device):
  int64_t* group_begin = nullptr;       // [n_experts + 1]: rows of expert e are [begin[e], begin[e+1])
  int32_t* row_of_slot = nullptr;       // [n_tokens · topk]
  uint16_t* x_grouped = nullptr;        // [n_tokens · topk, hidden] bf16 bits
  uint16_t* x_grouped_lo = nullptr;     // or null: the same rows' rounding remainders, bf16 (split)
  int32_t* scratch = nullptr;           // [n_tokens · topk + n_experts] ints of device memory
};

absl::Status Permute(const PermuteParams& p, cudaStream_t stream);

struct UnpermuteParams {
  const float* y_grouped = nullptr;    // [n_tokens · topk, hidden]: expert outputs by row
  const int32_t* row_of_slot = nullptr;
  const float* weights = nullptr;      // [n_tokens, topk]
  const float* shared = nullptr;       // [n_tokens, hidden] added after the routed sum, or null
  int64_t n_tokens = 0;
  int64_t topk = 0;
  int64_t hidden = 0;
  float* out = nullptr;                // [n_tokens, hidden]
};

absl::Status Unpermute(const UnpermuteParams& p, cudaStream_t stream);

}  // namespace daedalus::cuda
