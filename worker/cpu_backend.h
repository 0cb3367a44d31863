// The CPU backend: host memory, the kernel tier chosen at start (kernels/cpu_isa.h), OpenMP
// threads, and the engine's PagedKvCache for the latents. Every op is batch-invariant: a row's
// result does not depend on the rows beside it, the batch size, a prompt's chunking or the
// thread count (see worker/mla.cc and kernels/linear.h).
#pragma once

#include <array>
#include <vector>

#include "core/buffer.h"
#include "worker/backend.h"
#include "worker/kv_cache.h"
#include "worker/rope.h"

namespace daedalus {

class CpuBackend final : public Backend {
 public:
  // `weights` and `cache` outlive the backend.
  CpuBackend(const ModelWeights& weights, PagedKvCache& cache);

  absl::Status Begin(const ForwardBatch& batch, const std::vector<bool>& absorbed) override;
  absl::StatusOr<void*> Reserve(Buffer which, size_t bytes) override;
  absl::StatusOr<const void*> ToHost(Buffer which, size_t bytes) override;
  absl::Status Upload(Buffer which, const void* host, size_t bytes) override;
  absl::Status Embed(const WeightView& table, float* out) override;
  absl::Status RmsNorm(const RmsNormOp& op) override;
  absl::Status Add(float* y, const float* x, int64_t n) override;
  absl::Status Linear(const LinearOp* ops, int64_t n) override;
  absl::Status Rope(const RopeOp& op) override;
  absl::Status KvWrite(int64_t layer, const float* latent) override;
  absl::Status MlaNaive(const MlaOp& op) override;     // worker/mla.cc
  absl::Status MlaAbsorbed(const MlaOp& op) override;  // worker/mla.cc
  absl::Status Route(const RouteOp& op) override;
  absl::Status Mlp(const MlpOp& op) override;
  absl::Status LocalExperts(const LocalExpertsOp& op) override;  // worker/moe.cc
  absl::Status ExpertRows(const ExpertRowsOp& op) override;      // worker/moe.cc
  absl::Status Combine(const CombineOp& op) override;            // worker/moe.cc
  absl::Status LogitRows(const float* x, float* y) override;
  absl::Status Logits(const float* hidden, const std::vector<float>& norm, const WeightView& lm_head,
                      float* logits) override;

 private:
  const ModelConfig& config_;
  PagedKvCache& cache_;
  RopeTable rope_;
  const ForwardBatch* batch_ = nullptr;
  std::vector<bool> absorbed_;
  std::vector<float> cos_, sin_;  // [n_tokens, qk_rope_head_dim / 2] at the batch's positions
  std::array<FloatBuffer, static_cast<size_t>(Buffer::kCount)> buffers_;
  // The ops' own intermediates, kept from step to step (AtLeast, core/buffer.h): the expert
  // products' outputs, their gate and up activations, absorbed attention's latent queries and
  // outputs, the final norm's rows.
  struct Scratch {
    FloatBuffer expert_out, shared_out, gate_up, q_latent, o_latent, final_x;
  } scratch_;
};

// out[t] = Σ_k weights[t·K + k] · slot_rows[t·K + k] in order of k, plus shared[t] when set
// (host memory): the combine's sum, the same on every backend.
void SumSlots(const float* const* slot_rows, const float* weights, const float* shared, int64_t n_tokens, int64_t topk,
              int64_t hidden, float* out);

}  // namespace daedalus
