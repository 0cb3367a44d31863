// DeepSeekMoE on the CPU backend: expert products over grouped rows, and the combine.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/buffer.h"
#include "core/status.h"
#include "kernels/linear.h"
#include "kernels/ops.h"
#include "routing/dispatch.h"
#include "worker/cpu_backend.h"

namespace daedalus {

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

void SumSlots(const float* const* slot_rows, const float* weights, const float* shared, int64_t n_tokens, int64_t topk,
              int64_t hidden, float* out) {
  // Each token's sum alone, in slot order: a prefill's tokens are shared over the threads.
#pragma omp parallel if (n_tokens * hidden >= kShareOverThreads)
  {
    std::vector<float> routed(hidden);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n_tokens; ++t) {
      std::fill(routed.begin(), routed.end(), 0.0f);
      for (int64_t k = 0; k < topk; ++k) Axpy(weights[t * topk + k], slot_rows[t * topk + k], routed.data(), hidden);
      for (int64_t i = 0; i < hidden; ++i)
        out[t * hidden + i] = shared != nullptr ? routed[i] + shared[t * hidden + i] : routed[i];
    }
  }
}

// Every expert with rows, and the shared experts over this rank's tokens, as two batched
// products: gate and up, then down.
absl::Status CpuBackend::ExpertRows(const ExpertRowsOp& op) {
  const LayerWeights& w = *op.w;
  const ReceivedRows& rows = *op.rows;
  struct Active {
    const MlpWeights* w;
    int64_t n;
    const float* const* x_rows;  // null: the dense x below
    const float* x;
    float* const* y_rows;
    float* y;
    float* gate = nullptr;  // [n, width] each, carved from scratch_.gate_up below
    float* up = nullptr;
  };
  std::vector<Active> active;
  for (int64_t e = 0; e + 1 < static_cast<int64_t>(rows.expert_begin.size()); ++e) {
    const int64_t begin = rows.expert_begin[e], n = rows.expert_begin[e + 1] - begin;
    if (n > 0) active.push_back(Active{&w.experts[e], n, &rows.x[begin], nullptr, &(*op.out_rows)[begin], nullptr});
  }
  if (w.shared_experts) active.push_back(Active{&*w.shared_experts, op.n_tokens, nullptr, op.x, nullptr, op.shared_out});
  int64_t gate_up_floats = 0;
  for (const Active& a : active) gate_up_floats += a.n * (a.w->gate_proj.rows + a.w->up_proj.rows);
  float* next = AtLeast(scratch_.gate_up, gate_up_floats).data();
  std::vector<LinearProblem> problems;
  for (Active& a : active) {
    a.gate = next;
    a.up = a.gate + a.n * a.w->gate_proj.rows;
    next = a.up + a.n * a.w->up_proj.rows;
    problems.push_back({a.x, a.n, a.w->gate_proj, a.gate, a.x_rows});
    problems.push_back({a.x, a.n, a.w->up_proj, a.up, a.x_rows});
  }
  LinearBatch(problems.data(), static_cast<int64_t>(problems.size()));
  problems.clear();
  const int64_t n_active = static_cast<int64_t>(active.size());
  // Over the threads unless as small as one token's (a parallel region costs a batch-1 step more
  // than its few SiLUs); counted over the rows, which may be other ranks' as well as this one's.
#pragma omp parallel for schedule(dynamic) if (gate_up_floats > 8192)
  for (int64_t i = 0; i < n_active; ++i) {
    Active& a = active[i];
    SiluMulSeparate(a.gate, a.up, a.n, a.w->gate_proj.rows, a.gate);
  }
  for (Active& a : active) problems.push_back({a.gate, a.n, a.w->down_proj, a.y, nullptr, a.y_rows});
  LinearBatch(problems.data(), static_cast<int64_t>(problems.size()));
  return absl::OkStatus();
}

absl::Status CpuBackend::Combine(const CombineOp& op) {
  SumSlots(op.slot_rows->data(), op.weights, op.shared, op.n_tokens, config_.num_experts_per_tok, config_.hidden_size,
           op.out);
  return absl::OkStatus();
}

// The single-process path: this rank's own slots grouped by expert, through ExpertRows, summed
// in slot order — the same sums as under an exchange.
absl::Status CpuBackend::LocalExperts(const LocalExpertsOp& op) {
  const int64_t D = config_.hidden_size, E = config_.n_routed_experts, K = config_.num_experts_per_tok;
  if (op.load != nullptr) {
    op.load->resize(E, 0);
    for (int64_t i = 0; i < op.n_tokens * K; ++i) ++(*op.load)[op.expert_ids[i]];
  }
  const ReceivedRows rows = GroupLocally(op.x, op.n_tokens, K, op.expert_ids, D, E);
  float* local_out = AtLeast(scratch_.expert_out, rows.rows() * D).data();
  float* shared_out = op.w->shared_experts ? AtLeast(scratch_.shared_out, op.n_tokens * D).data() : nullptr;
  std::vector<float*> out_rows;
  for (int64_t i = 0; i < rows.rows(); ++i) out_rows.push_back(&local_out[i * D]);
  RETURN_IF_ERROR(ExpertRows({op.w, &rows, &out_rows, op.x, op.n_tokens, shared_out}));
  std::vector<const float*> slot_rows(op.n_tokens * K);
  for (int64_t i = 0; i < rows.rows(); ++i) slot_rows[rows.headers[i].slot] = out_rows[i];
  return Combine({&slot_rows, op.weights, shared_out, op.n_tokens, op.out});
}

}  // namespace daedalus
