// The MoE gate on the GPU, with routing/gate.h's semantics exactly: scores (sigmoid or
// softmax of the logits, fp32), the correction bias added for selection only, group-limited
// top-k (group score: sum of the top-2 biased scores or the max), the chosen experts ascending,
// their unbiased scores renormalised (or not) and times routed_scaling_factor. Ties go to the
// lower id. One block per token; the selection runs on one thread (E ≤ a few hundred).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace daedalus::cuda {

struct GateParams {
  const float* logits = nullptr;  // [n_tokens, n_routed_experts]: gate.weight · x
  const float* bias = nullptr;    // [n_routed_experts] e_score_correction_bias, or null
  int64_t n_tokens = 0;
  int64_t n_routed_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool sigmoid = true;
  bool group_top2_sum = true;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
  int32_t* expert_ids = nullptr;  // [n_tokens, num_experts_per_tok], ascending per token
  float* weights = nullptr;       // [n_tokens, num_experts_per_tok]
};

absl::Status Route(const GateParams& p, cudaStream_t stream);

}  // namespace daedalus::cuda
