// The MoE gate: which routed experts a token uses, and with what weights.
// Semantics follow DeepSeek's inference/model.py and the checkpoint's config (see
// shared/MODEL-SEMANTICS.md, "MoE routing, by config").
#pragma once

#include <cstdint>
#include <vector>

#include "core/model_config.h"

namespace daedalus {

struct GateParams {
  int64_t n_routed_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool sigmoid = true;          // scoring_func: sigmoid (V3) or softmax (V2)
  bool group_top2_sum = true;   // group score: sum of top-2 biased scores (noaux_tc) or max
  bool norm_topk_prob = true;   // renormalise the chosen weights to sum 1
  float routed_scaling_factor = 1.0f;

  static GateParams FromConfig(const ModelConfig& config);
};

// For each of n_tokens rows of `logits` [n_tokens, n_routed_experts] (gate.weight · x, float):
// writes expert_ids and weights [n_tokens, num_experts_per_tok], ids ascending per token.
// `bias` (e_score_correction_bias, may be null) is added for selection only. Ties go to the
// lower expert id, so the choice is deterministic.
void Route(const GateParams& params, const float* logits, const float* bias, int64_t n_tokens, int32_t* expert_ids,
           float* weights);

}  // namespace daedalus
