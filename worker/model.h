// The DeepSeek forward pass over a batch of sequence slices (continuous batching): each slice
// is a run of consecutive tokens of one sequence — a prefill chunk or one decode token.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "routing/dispatch.h"
#include "routing/expert_load.h"
#include "worker/kv_cache.h"
#include "worker/rope.h"
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

struct SequenceSlice {
  const PagedKvCache::PageTable* pages = nullptr;  // reserved up to start_pos + n_tokens
  int64_t start_pos = 0;  // absolute position of the slice's first token
  int64_t n_tokens = 0;
  int64_t offset = 0;     // first row of the slice in the batch
  // Generated tokens (past the prompt), not a prompt chunk: kAuto attends absorbed for these, so
  // how a prompt is cut into chunks never changes which form computes it.
  bool decode = false;
};

struct ForwardBatch {
  std::vector<int32_t> token_ids;      // [n_tokens], slices' tokens back to back
  std::vector<SequenceSlice> slices;
  std::vector<int64_t> logit_rows;     // batch rows whose next-token logits are wanted
};

// A forward pass that runs elsewhere than DeepSeekModel (a GPU: worker/cuda/gpu_model.h). It
// keeps the latent cache in its own memory, indexed by the page ids of the engine's
// PagedKvCache (which then holds page tables only), and has DeepSeekModel::Forward's contract.
class ForwardBackend {
 public:
  virtual ~ForwardBackend() = default;
  virtual absl::Status Forward(const ForwardBatch& batch, float* logits, const MoeContext& moe) = 0;
};

class DeepSeekModel {
 public:
  DeepSeekModel(const ModelWeights& weights, AttentionPath path = AttentionPath::kAuto);

  // Writes each slice's latents into `cache` and logits [logit_rows, vocab_size] into `logits`.
  // With exchanges (expert parallelism) the call is collective and runs even for an empty
  // batch, serving the experts placed on this rank.
  absl::Status Forward(const ForwardBatch& batch, PagedKvCache& cache, float* logits,
                       const MoeContext& moe = MoeContext{}) const;

  const ModelConfig& config() const { return weights_.config; }
  const ModelWeights& weights() const { return weights_; }

 private:
  const ModelWeights& weights_;
  AttentionPath path_;
  RopeTable rope_;
};

// Per-layer parts, in their own files.
struct RopeAngles {  // [n_tokens, pairs]
  std::vector<float> cos, sin;
};
void MlaForward(const ModelConfig& config, const AttentionWeights& w, int64_t layer, const float* x,
                const ForwardBatch& batch, const RopeAngles& angles, AttentionPath path, PagedKvCache& cache,
                float* out);
void MlpForward(const MlpWeights& w, const float* x, int64_t n_tokens, float* out);
// With an exchange, routed tokens go to the ranks holding their experts (collective: every
// rank calls it for every MoE layer, also with no tokens); without, all experts are local.
absl::Status MoeForward(const ModelConfig& config, const LayerWeights& w, const float* x, int64_t n_tokens, float* out,
                        ExpertExchange* exchange, std::vector<int64_t>* load, const std::string& what);

}  // namespace daedalus
