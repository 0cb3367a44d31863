#include "worker/cpu_backend.h"

#include <omp.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/linear.h"
#include "kernels/ops.h"
#include "routing/gate.h"

namespace daedalus {

CpuBackend::CpuBackend(const ModelWeights& weights, PagedKvCache& cache)
    : config_(weights.config), cache_(cache), rope_(weights.config) {}

absl::Status CpuBackend::Begin(const ForwardBatch& batch, const std::vector<bool>& absorbed) {
  if (absorbed.size() != batch.slices.size())
    return absl::InvalidArgumentError(absl::StrCat("Begin: ", absorbed.size(), " absorbed flags for ",
                                                   batch.slices.size(), " slices"));
  batch_ = &batch;
  absorbed_ = absorbed;
  const int64_t pairs = rope_.pairs();
  cos_.resize(batch.token_ids.size() * pairs);
  sin_.resize(batch.token_ids.size() * pairs);
  for (const SequenceSlice& s : batch.slices)
    for (int64_t t = 0; t < s.n_tokens; ++t)
      rope_.Angles(s.start_pos + t, &cos_[(s.offset + t) * pairs], &sin_[(s.offset + t) * pairs]);
  return absl::OkStatus();
}

absl::StatusOr<void*> CpuBackend::Reserve(Buffer which, size_t bytes) {
  FloatBuffer& b = buffers_[static_cast<size_t>(which)];
  if (b.size() * sizeof(float) < bytes) b.resize((bytes + sizeof(float) - 1) / sizeof(float));
  return static_cast<void*>(b.data());
}

absl::StatusOr<const void*> CpuBackend::ToHost(Buffer which, size_t bytes) {
  const FloatBuffer& b = buffers_[static_cast<size_t>(which)];
  if (bytes > b.size() * sizeof(float))
    return absl::InvalidArgumentError(absl::StrCat("ToHost: ", bytes, " bytes asked of activation buffer ",
                                                   static_cast<int>(which), ", which holds ", b.size() * sizeof(float)));
  return static_cast<const void*>(b.data());
}

absl::Status CpuBackend::Upload(Buffer which, const void* host, size_t bytes) {
  ASSIGN_OR_RETURN(void* p, Reserve(which, bytes));
  if (bytes > 0) std::memcpy(p, host, bytes);
  return absl::OkStatus();
}

absl::Status CpuBackend::Embed(const WeightView& table, float* out) {
  const int64_t D = config_.hidden_size, T = static_cast<int64_t>(batch_->token_ids.size());
  const size_t elem = DTypeSize(table.dtype);
#pragma omp parallel for schedule(static) if (T * D >= kShareOverThreads)
  for (int64_t t = 0; t < T; ++t) {
    const auto* row = static_cast<const uint8_t*>(table.data) + batch_->token_ids[t] * D * elem;
    if (table.dtype == DType::kF32) std::memcpy(&out[t * D], row, D * 4);
    else Bf16ToF32(reinterpret_cast<const bf16*>(row), &out[t * D], D);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::RmsNorm(const RmsNormOp& op) {
  daedalus::RmsNorm(op.x, op.gamma->data(), op.rows, op.n, static_cast<float>(config_.rms_norm_eps), op.y,
                    op.x_stride, op.y_stride);
  return absl::OkStatus();
}

absl::Status CpuBackend::Add(float* y, const float* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kShareOverThreads)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  return absl::OkStatus();
}

absl::Status CpuBackend::Linear(const LinearOp* ops, int64_t n) {
  std::vector<LinearProblem> problems;
  problems.reserve(n);
  for (int64_t i = 0; i < n; ++i) problems.push_back({ops[i].x, ops[i].m, *ops[i].w, ops[i].y});
  LinearBatch(problems.data(), n);
  return absl::OkStatus();
}

absl::Status CpuBackend::Rope(const RopeOp& op) {
  const int64_t T = static_cast<int64_t>(batch_->token_ids.size()), pairs = rope_.pairs();
  // Each (token, head) rotates alone: any split over the threads gives the same bits.
#pragma omp parallel for schedule(static) if (T * op.heads * config_.qk_rope_head_dim >= kShareOverThreads)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < op.heads; ++h)
      RotateInterleaved(op.v + t * op.token_stride + h * op.head_stride, config_.qk_rope_head_dim, &cos_[t * pairs],
                        &sin_[t * pairs]);
  return absl::OkStatus();
}

absl::Status CpuBackend::KvWrite(int64_t layer, const float* latent) {
  const int64_t dim = config_.kv_cache_dim();
  for (const SequenceSlice& s : batch_->slices) {
    auto write = [&](int64_t t) { cache_.Write(*s.pages, layer, s.start_pos + t, &latent[(s.offset + t) * dim]); };
    // A decode step's slices (one row each) write on this thread: a parallel region per slice,
    // even with one thread, cost ~1 us each (batch 64: KvWrite 0.8% of a step).
    if (s.n_tokens * dim < kShareOverThreads) {
      for (int64_t t = 0; t < s.n_tokens; ++t) write(t);
      continue;
    }
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < s.n_tokens; ++t) write(t);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Route(const RouteOp& op) {
  const GateParams p = GateParams::FromConfig(config_);
  const int64_t E = config_.n_routed_experts, K = config_.num_experts_per_tok;
  const float* bias = op.bias->empty() ? nullptr : op.bias->data();
  // Each token routes alone: a prefill's tokens (a few hundred operations each) are cut into one
  // run per thread.
  const int64_t runs = op.n_tokens >= 64 ? omp_get_max_threads() : 1;
#pragma omp parallel for schedule(static) if (runs > 1)
  for (int64_t r = 0; r < runs; ++r) {
    const int64_t t0 = op.n_tokens * r / runs, t1 = op.n_tokens * (r + 1) / runs;
    daedalus::Route(p, op.logits + t0 * E, bias, t1 - t0, op.expert_ids + t0 * K, op.weights + t0 * K);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Mlp(const MlpOp& op) {
  const MlpWeights& w = *op.w;
  const int64_t width = w.gate_proj.rows;
  float* gate = AtLeast(scratch_.gate_up, 2 * op.n_tokens * width).data();
  float* up = gate + op.n_tokens * width;
  const LinearProblem gate_up[] = {{op.x, op.n_tokens, w.gate_proj, gate}, {op.x, op.n_tokens, w.up_proj, up}};
  LinearBatch(gate_up, 2);
  SiluMulSeparate(gate, up, op.n_tokens, width, gate);
  daedalus::Linear(gate, op.n_tokens, w.down_proj, op.y);
  return absl::OkStatus();
}

absl::Status CpuBackend::LogitRows(const float* x, float* y) {
  const int64_t D = config_.hidden_size;
  for (size_t r = 0; r < batch_->logit_rows.size(); ++r)
    std::memcpy(&y[r * D], &x[batch_->logit_rows[r] * D], D * sizeof(float));
  return absl::OkStatus();
}

absl::Status CpuBackend::Logits(const float* hidden, const std::vector<float>& norm, const WeightView& lm_head,
                                float* logits) {
  const int64_t D = config_.hidden_size, R = static_cast<int64_t>(batch_->logit_rows.size());
  float* final_x = AtLeast(scratch_.final_x, R * D).data();
  daedalus::RmsNorm(hidden, norm.data(), R, D, static_cast<float>(config_.rms_norm_eps), final_x, D, D);
  daedalus::Linear(final_x, R, lm_head, logits);
  return absl::OkStatus();
}

}  // namespace daedalus
