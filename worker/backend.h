// The ops the DeepSeek forward pass (worker/model.h) is written over, one implementation per
// device: CpuBackend (worker/cpu_backend.h: host memory, the CPU kernel tiers of kernels/) and
// CudaBackend (worker/cuda/cuda_backend.h: device memory, kernels/cuda/). The model makes every
// decision — which form attends, where routed rows go, the order slots are summed in; a backend
// holds memory and runs kernels, and has no model logic.
//
// Memory: activations are the backend's own buffers, one per role (Reserve), grown to the
// largest batch seen. Weights are named by their host views in ModelWeights, which a device
// backend maps to the copies it uploaded. Every pointer in an op is backend memory unless its
// comment says host.
// Order: ops run in call order; ToHost and Logits return with their host data in place.
// One thread drives a backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "routing/dispatch.h"
#include "worker/forward_batch.h"
#include "worker/weights.h"

namespace daedalus {

// Activation buffers by role. Each op's comment gives its shapes; float unless said.
enum class Buffer {
  kHidden,         // [n_tokens, hidden_size]: the residual stream
  kNormed,         // [n_tokens, hidden_size]: RMSNorm of it, a sublayer's input
  kSublayer,       // [n_tokens, hidden_size]: a sublayer's output
  kQ,              // [n_tokens, heads, qk_nope_head_dim + qk_rope_head_dim]
  kQa,             // [n_tokens, q_lora_rank]
  kKvA,            // [n_tokens, kv_lora_rank + qk_rope_head_dim]: becomes the cached latent
  kO,              // [n_tokens, heads, v_head_dim]
  kGateLogits,     // [n_tokens, n_routed_experts]
  kExpertIds,      // int32 [n_tokens, num_experts_per_tok]
  kExpertWeights,  // [n_tokens, num_experts_per_tok]
  kSharedOut,      // [n_tokens, hidden_size]: the shared experts' output
  kLogitHidden,    // [logit_rows, hidden_size]: the residual stream's logit rows (LogitRows)
  kCount
};

struct LinearOp {  // y [m, w.rows] = x [m, w.cols] · wᵀ
  const float* x = nullptr;
  int64_t m = 0;
  const WeightView* w = nullptr;
  float* y = nullptr;
};

struct RmsNormOp {  // y[i, :n] = x[i, :n] / rms(x[i, :n]) · gamma, eps = rms_norm_eps; may alias
  const float* x = nullptr;
  const std::vector<float>* gamma = nullptr;  // [n]
  int64_t rows = 0, n = 0, x_stride = 0, y_stride = 0;
  float* y = nullptr;
};

// Rotates qk_rope_head_dim interleaved pairs in place at v + t·token_stride + h·head_stride for
// every batch token t (at its position) and h < heads.
struct RopeOp {
  float* v = nullptr;
  int64_t heads = 1, token_stride = 0, head_stride = 0;
};

// Attention of the batch's slices in one form, over the paged latent cache (written by KvWrite
// for this layer first).
struct MlaOp {
  int64_t layer = 0;
  const AttentionWeights* w = nullptr;
  const float* q = nullptr;  // [n_tokens, heads, qk_nope + qk_rope], rotated
  float* o = nullptr;        // [n_tokens, heads, v_head_dim]: that form's slices' rows written
};

struct RouteOp {  // the gate (routing/gate.h) over scores already computed
  const float* logits = nullptr;              // [n_tokens, n_routed_experts]
  const std::vector<float>* bias = nullptr;   // e_score_correction_bias; empty: none
  int64_t n_tokens = 0;
  int32_t* expert_ids = nullptr;              // [n_tokens, num_experts_per_tok], ascending
  float* weights = nullptr;                   // [n_tokens, num_experts_per_tok]
};

struct MlpOp {  // y = down · (silu(gate · x) ⊙ (up · x))
  const MlpWeights* w = nullptr;
  const float* x = nullptr;  // [n_tokens, hidden_size]
  int64_t n_tokens = 0;
  float* y = nullptr;        // [n_tokens, hidden_size]
};

// A MoE layer's routed and shared experts when every expert is local: out = Σ_k weights ·
// expert_k(x) in slot order, plus the shared experts.
struct LocalExpertsOp {
  const LayerWeights* w = nullptr;
  const float* x = nullptr;            // [n_tokens, hidden_size]
  int64_t n_tokens = 0;
  const int32_t* expert_ids = nullptr;  // [n_tokens, num_experts_per_tok]
  const float* weights = nullptr;       // [n_tokens, num_experts_per_tok]
  float* out = nullptr;                 // [n_tokens, hidden_size]
  std::vector<int64_t>* load = nullptr;  // host, [n_routed_experts]: adds the routed pairs when set
};

// Expert parallelism: the rows another rank's dispatch brought (host), through their experts,
// into `out_rows` (host); and the shared experts over this rank's own tokens.
struct ExpertRowsOp {
  const LayerWeights* w = nullptr;
  const ReceivedRows* rows = nullptr;          // host, grouped by expert
  const std::vector<float*>* out_rows = nullptr;  // host, one per received row
  const float* x = nullptr;                    // [n_tokens, hidden_size]
  int64_t n_tokens = 0;
  float* shared_out = nullptr;                 // [n_tokens, hidden_size]; unused without shared experts
};

// out[t] = Σ_k weights[t, k] · slot_rows[t·K + k] in order of k, plus shared[t].
struct CombineOp {
  const std::vector<const float*>* slot_rows = nullptr;  // host, [n_tokens · num_experts_per_tok]
  const float* weights = nullptr;                        // [n_tokens, num_experts_per_tok]
  const float* shared = nullptr;                         // [n_tokens, hidden_size]; null: none
  int64_t n_tokens = 0;
  float* out = nullptr;                                  // [n_tokens, hidden_size]
};

class Backend {
 public:
  virtual ~Backend() = default;

  // The step's batch and which of its slices attend in the absorbed form (one flag per slice,
  // else InvalidArgument); the ops below run on it until the next Begin. The batch outlives
  // those calls.
  virtual absl::Status Begin(const ForwardBatch& batch, const std::vector<bool>& absorbed) = 0;
  // The buffer `which`, at least `bytes` long. Growing it may move it and lose its contents
  // (a device backend reallocates), so a role is reserved at its size for the step before use.
  virtual absl::StatusOr<void*> Reserve(Buffer which, size_t bytes) = 0;
  // The first `bytes` of `which`, readable on the host until the next call with `which`;
  // InvalidArgument if `which` holds fewer.
  virtual absl::StatusOr<const void*> ToHost(Buffer which, size_t bytes) = 0;
  // Writes `bytes` of host memory to the start of `which` (reserved to fit).
  virtual absl::Status Upload(Buffer which, const void* host, size_t bytes) = 0;
  // Returns when every op called so far has run (a device backend's ops may run after they
  // return; the CPU's run within the call).
  virtual absl::Status Wait() { return absl::OkStatus(); }

  // out [n_tokens, hidden_size]: the batch tokens' rows of `table`.
  virtual absl::Status Embed(const WeightView& table, float* out) = 0;
  virtual absl::Status RmsNorm(const RmsNormOp& op) = 0;
  virtual absl::Status Add(float* y, const float* x, int64_t n) = 0;  // y[i] += x[i]
  // Independent products, run together where the device gains from it.
  virtual absl::Status Linear(const LinearOp* ops, int64_t n) = 0;
  virtual absl::Status Rope(const RopeOp& op) = 0;
  // Writes latent [n_tokens, kv_lora_rank + qk_rope_head_dim] into the layer's cache rows at
  // the batch tokens' positions.
  virtual absl::Status KvWrite(int64_t layer, const float* latent) = 0;
  virtual absl::Status MlaNaive(const MlaOp& op) = 0;     // slices Begin marked not absorbed
  virtual absl::Status MlaAbsorbed(const MlaOp& op) = 0;  // slices Begin marked absorbed
  virtual absl::Status Route(const RouteOp& op) = 0;
  virtual absl::Status Mlp(const MlpOp& op) = 0;
  virtual absl::Status LocalExperts(const LocalExpertsOp& op) = 0;
  virtual absl::Status ExpertRows(const ExpertRowsOp& op) = 0;
  virtual absl::Status Combine(const CombineOp& op) = 0;
  // y [logit_rows, hidden_size] = the batch's logit_rows of x [n_tokens, hidden_size], in order.
  virtual absl::Status LogitRows(const float* x, float* y) = 0;
  // logits (host) [logit_rows, vocab_size] = lm_head · RMSNorm(hidden[r], norm) for r < the
  // batch's logit_rows.size(): hidden holds those rows only, in order (LogitRows).
  virtual absl::Status Logits(const float* hidden, const std::vector<float>& norm, const WeightView& lm_head,
                              float* logits) = 0;
};

}  // namespace daedalus
