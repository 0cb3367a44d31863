// Dense MLP and DeepSeekMoE layers.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/buffer.h"
#include "kernels/ops.h"
#include "core/status.h"
#include "routing/dispatch.h"
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

namespace {

// The single-process stand-in for Dispatch: this rank's own slots, grouped by expert, reading
// the activations in place.
ReceivedRows GroupLocally(const float* x, int64_t n_tokens, int64_t topk, const int32_t* ids, int64_t hidden,
                          int64_t n_experts) {
  ReceivedRows rows;
  rows.expert_begin.assign(n_experts + 1, 0);
  for (int64_t slot = 0; slot < n_tokens * topk; ++slot) ++rows.expert_begin[ids[slot] + 1];
  for (int64_t e = 0; e < n_experts; ++e) rows.expert_begin[e + 1] += rows.expert_begin[e];
  std::vector<int64_t> next(rows.expert_begin.begin(), rows.expert_begin.end() - 1);
  rows.headers.resize(n_tokens * topk);
  rows.x.resize(n_tokens * topk);
  for (int64_t slot = 0; slot < n_tokens * topk; ++slot) {
    const int64_t at = next[ids[slot]]++;
    rows.headers[at] = RowHeader{0, static_cast<int32_t>(slot), ids[slot], static_cast<int32_t>(hidden)};
    rows.x[at] = x + (slot / topk) * hidden;
  }
  return rows;
}

}  // namespace

absl::Status MoeForward(const ModelConfig& c, const LayerWeights& w, const float* x, int64_t n_tokens, float* out,
                        ExpertExchange* exchange, std::vector<int64_t>* load, const std::string& what) {
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  std::vector<float> logits(n_tokens * E), weights(n_tokens * K);
  std::vector<int32_t> ids(n_tokens * K);
  Linear(x, n_tokens, w.gate, logits.data());
  Route(GateParams::FromConfig(c), logits.data(),
        w.e_score_correction_bias.empty() ? nullptr : w.e_score_correction_bias.data(), n_tokens, ids.data(),
        weights.data());
  if (load != nullptr) {
    load->resize(E, 0);
    for (int32_t id : ids) ++(*load)[id];
  }

  // Rows to compute here, grouped by expert: this rank's own (single process) or whatever the
  // other ranks dispatched to the experts placed here. Each row's output goes where combine
  // will send it from (or, single process, to a local buffer).
  ReceivedRows rows;
  FloatBuffer local_out;
  std::vector<float*> out_rows;
  if (exchange != nullptr) {
    RETURN_IF_ERROR(exchange->Dispatch(x, n_tokens, K, ids.data(), what, rows));
    out_rows = exchange->CombineOutputs(rows);
  } else {
    rows = GroupLocally(x, n_tokens, K, ids.data(), D, E);
    local_out.resize(rows.rows() * D);
    for (int64_t i = 0; i < rows.rows(); ++i) out_rows.push_back(&local_out[i * D]);
  }
  // Every expert with rows, and the shared experts over this rank's tokens, as two batched
  // products: gate and up, then down.
  struct Active {
    const MlpWeights* w;
    int64_t n;
    const float* const* x_rows;  // null: the dense x below
    const float* x;
    float* const* y_rows;
    float* y;
    FloatBuffer gate, up;
  };
  FloatBuffer shared_out(n_tokens * D);
  std::vector<Active> active;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = rows.expert_begin[e], n = rows.expert_begin[e + 1] - begin;
    if (n > 0) active.push_back(Active{&w.experts[e], n, &rows.x[begin], nullptr, &out_rows[begin], nullptr, {}, {}});
  }
  if (w.shared_experts) active.push_back(Active{&*w.shared_experts, n_tokens, nullptr, x, nullptr, shared_out.data(), {}, {}});
  std::vector<LinearProblem> problems;
  for (Active& a : active) {
    a.gate.resize(a.n * a.w->gate_proj.rows);
    a.up.resize(a.n * a.w->up_proj.rows);
    problems.push_back({a.x, a.n, a.w->gate_proj, a.gate.data(), a.x_rows});
    problems.push_back({a.x, a.n, a.w->up_proj, a.up.data(), a.x_rows});
  }
  LinearBatch(problems.data(), static_cast<int64_t>(problems.size()));
  problems.clear();
  const int64_t n_active = static_cast<int64_t>(active.size());
#pragma omp parallel for schedule(dynamic) if (n_tokens > 1)
  for (int64_t i = 0; i < n_active; ++i) {
    Active& a = active[i];
    SiluMulSeparate(a.gate.data(), a.up.data(), a.n, a.w->gate_proj.rows, a.gate.data());
  }
  for (Active& a : active) problems.push_back({a.gate.data(), a.n, a.w->down_proj, a.y, nullptr, a.y_rows});
  LinearBatch(problems.data(), static_cast<int64_t>(problems.size()));

  // Combine: one output row per (token, slot), summed in slot order, which is ascending expert
  // id, so the sum is the same wherever the experts ran; then the shared experts.
  std::vector<const float*> slot_rows(n_tokens * K);
  if (exchange != nullptr) {
    RETURN_IF_ERROR(exchange->Combine(what, slot_rows));
  } else {
    for (int64_t i = 0; i < rows.rows(); ++i) slot_rows[rows.headers[i].slot] = out_rows[i];
  }
  std::vector<float> routed(D);
  for (int64_t t = 0; t < n_tokens; ++t) {
    std::fill(routed.begin(), routed.end(), 0.0f);
    for (int64_t k = 0; k < K; ++k) Axpy(weights[t * K + k], slot_rows[t * K + k], routed.data(), D);
    for (int64_t i = 0; i < D; ++i) out[t * D + i] = w.shared_experts ? routed[i] + shared_out[t * D + i] : routed[i];
  }
  return absl::OkStatus();
}

}  // namespace daedalus
