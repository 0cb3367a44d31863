// Dense MLP and DeepSeekMoE layers.
#include <vector>

#include "core/buffer.h"
#include "kernels/ops.h"
#include "routing/gate.h"
#include "worker/model.h"

namespace daedalus {

void MlpForward(const MlpWeights& w, const float* x, int64_t n_tokens, float* out) {
  const int64_t width = w.gate_proj.rows;
  FloatBuffer gate(n_tokens * width), up(n_tokens * width);
  const LinearProblem gate_up[] = {{x, n_tokens, w.gate_proj, gate.data()}, {x, n_tokens, w.up_proj, up.data()}};
  LinearBatch(gate_up, 2);
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

  // Group (token, slot) pairs by expert. The active experts (and the shared experts, as one
  // more "expert" over all tokens) run as two batched products: gate and up, then down.
  std::vector<std::vector<int64_t>> assigned(E);
  for (int64_t i = 0; i < n_tokens * K; ++i) assigned[ids[i]].push_back(i);
  struct Active {
    const MlpWeights* w;
    int64_t n;
    FloatBuffer x, gate, up, y;
  };
  std::vector<Active> active;
  for (int64_t e = 0; e < E; ++e) {
    if (assigned[e].empty()) continue;
    const int64_t n = static_cast<int64_t>(assigned[e].size());
    Active a{&w.experts[e], n, FloatBuffer(n * D), {}, {}, {}};
    for (int64_t j = 0; j < n; ++j) std::memcpy(&a.x[j * D], x + (assigned[e][j] / K) * D, D * 4);
    active.push_back(std::move(a));
  }
  if (w.shared_experts) active.push_back(Active{&*w.shared_experts, n_tokens, FloatBuffer(x, x + n_tokens * D), {}, {}, {}});
  std::vector<LinearProblem> problems;
  for (Active& a : active) {
    const int64_t width = a.w->gate_proj.rows;
    a.gate.resize(a.n * width);
    a.up.resize(a.n * width);
    a.y.resize(a.n * D);
    problems.push_back({a.x.data(), a.n, a.w->gate_proj, a.gate.data()});
    problems.push_back({a.x.data(), a.n, a.w->up_proj, a.up.data()});
  }
  LinearBatch(problems.data(), static_cast<int64_t>(problems.size()));
  problems.clear();
  for (Active& a : active) {
    SiluMulSeparate(a.gate.data(), a.up.data(), a.n, a.w->gate_proj.rows, a.gate.data());
    problems.push_back({a.gate.data(), a.n, a.w->down_proj, a.y.data()});
  }
  LinearBatch(problems.data(), static_cast<int64_t>(problems.size()));

  // Combine: experts in ascending id, so every token's routed outputs are summed in the same
  // order whatever the batch; then the shared experts.
  std::vector<float> routed(n_tokens * D, 0.0f);
  size_t next = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (assigned[e].empty()) continue;
    const Active& a = active[next++];
    for (int64_t j = 0; j < a.n; ++j) {
      const int64_t slot = assigned[e][j];
      Axpy(weights[slot], &a.y[j * D], &routed[(slot / K) * D], D);
    }
  }
  if (w.shared_experts) {
    const Active& shared = active.back();
    for (int64_t i = 0; i < n_tokens * D; ++i) out[i] = routed[i] + shared.y[i];
  } else {
    std::memcpy(out, routed.data(), routed.size() * 4);
  }
}

}  // namespace daedalus
