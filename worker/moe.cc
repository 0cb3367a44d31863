// Dense MLP and DeepSeekMoE layers.
#include <vector>

#include "kernels/ops.h"
#include "routing/gate.h"
#include "worker/model.h"

namespace daedalus {

void MlpForward(const MlpWeights& w, const float* x, int64_t n_tokens, float* out) {
  const int64_t width = w.gate_proj.rows;
  std::vector<float> gate(n_tokens * width), up(n_tokens * width);
  Linear(x, n_tokens, w.gate_proj, gate.data());
  Linear(x, n_tokens, w.up_proj, up.data());
  SiluMulSeparate(gate.data(), up.data(), n_tokens, width, gate.data());
  Linear(gate.data(), n_tokens, w.down_proj, out);
}

void MoeForward(const ModelConfig& c, const LayerWeights& w, const float* x, int64_t n_tokens, float* out) {
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  std::vector<float> logits(n_tokens * E), weights(n_tokens * K);
  std::vector<int32_t> ids(n_tokens * K);
  Linear(x, n_tokens, w.gate, logits.data());
  Route(GateParams::FromConfig(c), logits.data(),
        w.e_score_correction_bias.empty() ? nullptr : w.e_score_correction_bias.data(), n_tokens, ids.data(),
        weights.data());

  // Group (token, slot) pairs by expert; experts run in id order, so every token's routed
  // outputs are summed in ascending expert id whatever the batch.
  std::vector<std::vector<int64_t>> assigned(E);
  for (int64_t i = 0; i < n_tokens * K; ++i) assigned[ids[i]].push_back(i);
  std::vector<float> routed(n_tokens * D, 0.0f), xe, ye;
  for (int64_t e = 0; e < E; ++e) {
    const auto& slots = assigned[e];
    if (slots.empty()) continue;
    const int64_t n = static_cast<int64_t>(slots.size());
    xe.resize(n * D);
    ye.resize(n * D);
    for (int64_t j = 0; j < n; ++j) std::memcpy(&xe[j * D], x + (slots[j] / K) * D, D * 4);
    MlpForward(w.experts[e], xe.data(), n, ye.data());
    for (int64_t j = 0; j < n; ++j) Axpy(weights[slots[j]], &ye[j * D], &routed[(slots[j] / K) * D], D);
  }
  if (w.shared_experts) {
    MlpForward(*w.shared_experts, x, n_tokens, out);
    for (int64_t i = 0; i < n_tokens * D; ++i) out[i] += routed[i];
  } else {
    std::memcpy(out, routed.data(), routed.size() * 4);
  }
}

}  // namespace daedalus
