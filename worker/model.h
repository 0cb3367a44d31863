// The DeepSeek forward pass over a batch of sequence slices (worker/forward_batch.h), written
// once over the ops of worker/backend.h: the same logic runs on the CPU and on a GPU.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "routing/dispatch.h"
#include "routing/expert_load.h"
#include "worker/backend.h"
#include "worker/forward_batch.h"
#include "worker/weights.h"

namespace daedalus {

// Which MLA form attends: naive decompresses keys and values from the latent cache (used for
// prefill), absorbed folds kv_b_proj into query and output and attends in latent space (used
// for decode). kAuto picks absorbed for decode slices. Both compute the same sums (in float;
// with bf16 activations, as the avx512bf16 tier rounds them, they differ by that rounding).
enum class AttentionPath { kAuto, kNaive, kAbsorbed };

// How MoE layers run in one Forward.
struct MoeContext {
  // By layer: where routed tokens go. Null (or a null entry): every expert is local.
  const std::vector<std::unique_ptr<ExpertExchange>>* exchanges = nullptr;
  ExpertLoad* load = nullptr;  // when set, counts this rank's routed (token, slot) pairs
  int64_t step = 0;            // names the step in diagnostics
};

class DeepSeekModel {
 public:
  DeepSeekModel(const ModelWeights& weights, AttentionPath path = AttentionPath::kAuto);

  // Runs the batch on `backend`: writes each slice's latents into the backend's cache and logits
  // [logit_rows, vocab_size] into `logits` (host). With exchanges (expert parallelism) the call
  // is collective and runs even for an empty batch, serving the experts placed on this rank.
  absl::Status Forward(const ForwardBatch& batch, Backend& backend, float* logits,
                       const MoeContext& moe = MoeContext{}) const;

  const ModelConfig& config() const { return weights_.config; }
  const ModelWeights& weights() const { return weights_; }

 private:
  absl::Status Attention(Backend& b, int64_t layer, const ForwardBatch& batch, const std::vector<bool>& absorbed) const;
  absl::Status Moe(Backend& b, int64_t layer, int64_t n_tokens, const MoeContext& moe) const;

  const ModelWeights& weights_;
  AttentionPath path_;
};

}  // namespace daedalus
