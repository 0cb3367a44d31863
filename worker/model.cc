#include "worker/model.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace daedalus {
namespace {

// The buffer `which` as n elements of T (at least one, so that an empty batch has a pointer).
template <typename T>
absl::StatusOr<T*> Reserve(Backend& b, Buffer which, int64_t n) {
  ASSIGN_OR_RETURN(void* p, b.Reserve(which, static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T)));
  return static_cast<T*>(p);
}

// Whether the batch wants every row's logits, in order (a decode step's batch, or a prompt's
// logits): then the residual stream is the logit rows as it stands.
bool AllRowsWanted(const ForwardBatch& batch) {
  const auto& r = batch.logit_rows;
  if (r.size() != batch.token_ids.size()) return false;
  for (size_t i = 0; i < r.size(); ++i)
    if (r[i] != static_cast<int64_t>(i)) return false;
  return true;
}

}  // namespace

DeepSeekModel::DeepSeekModel(const ModelWeights& weights, AttentionPath path) : weights_(weights), path_(path) {}

absl::Status DeepSeekModel::Forward(const ForwardBatch& batch, Backend& b, float* logits, const MoeContext& moe) const {
  const ModelConfig& c = weights_.config;
  const int64_t T = static_cast<int64_t>(batch.token_ids.size()), D = c.hidden_size;
  if (T == 0 && moe.exchanges == nullptr) return absl::OkStatus();
  std::vector<bool> absorbed;
  for (const SequenceSlice& s : batch.slices)
    absorbed.push_back(path_ == AttentionPath::kAbsorbed || (path_ == AttentionPath::kAuto && s.decode));
  RETURN_IF_ERROR(b.Begin(batch, absorbed));

  // The residual stream, a sublayer's normed input and its output.
  ASSIGN_OR_RETURN(float* h, Reserve<float>(b, Buffer::kHidden, T * D));
  ASSIGN_OR_RETURN(float* x, Reserve<float>(b, Buffer::kNormed, T * D));
  ASSIGN_OR_RETURN(float* y, Reserve<float>(b, Buffer::kSublayer, T * D));
  if (T > 0) RETURN_IF_ERROR(b.Embed(weights_.embed_tokens, h));
  // Rows the feed-forward runs on: every row, but in the last layer only the logit rows (a
  // prompt chunk's last row, or none): no later op reads the others, whose latents are cached by
  // then. Each row's sums are the same either way (kernels/linear.h).
  int64_t rows = T;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    if (T > 0) {
      RETURN_IF_ERROR(b.RmsNorm({h, &w.input_layernorm, T, D, D, D, x}));
      RETURN_IF_ERROR(Attention(b, l, batch, absorbed));
      RETURN_IF_ERROR(b.Add(h, y, T * D));
    }
    if (l + 1 == c.num_hidden_layers && !AllRowsWanted(batch)) {
      rows = static_cast<int64_t>(batch.logit_rows.size());
      ASSIGN_OR_RETURN(float* kept, Reserve<float>(b, Buffer::kLogitHidden, rows * D));
      if (rows > 0) RETURN_IF_ERROR(b.LogitRows(h, kept));
      h = kept;
    }
    if (rows > 0) RETURN_IF_ERROR(b.RmsNorm({h, &w.post_attention_layernorm, rows, D, D, D, x}));
    if (w.moe) {
      RETURN_IF_ERROR(Moe(b, l, rows, moe));
    } else if (rows > 0) {
      RETURN_IF_ERROR(b.Mlp({&w.dense, x, rows, y}));
    }
    if (rows > 0) RETURN_IF_ERROR(b.Add(h, y, rows * D));
  }
  if (batch.logit_rows.empty()) return absl::OkStatus();
  return b.Logits(h, weights_.norm, weights_.lm_head, logits);
}

// Multi-head Latent Attention of the normed input into the sublayer output.
absl::Status DeepSeekModel::Attention(Backend& b, int64_t layer, const ForwardBatch& batch,
                                      const std::vector<bool>& absorbed) const {
  const ModelConfig& c = weights_.config;
  const AttentionWeights& w = weights_.layers[layer].attn;
  const int64_t T = static_cast<int64_t>(batch.token_ids.size()), D = c.hidden_size, H = c.num_attention_heads;
  const int64_t dn = c.qk_nope_head_dim, dv = c.v_head_dim, rkv = c.kv_lora_rank;
  const int64_t qk = dn + c.qk_rope_head_dim, dim = c.kv_cache_dim();
  ASSIGN_OR_RETURN(float* x, Reserve<float>(b, Buffer::kNormed, T * D));
  ASSIGN_OR_RETURN(float* y, Reserve<float>(b, Buffer::kSublayer, T * D));
  ASSIGN_OR_RETURN(float* q, Reserve<float>(b, Buffer::kQ, T * H * qk));
  ASSIGN_OR_RETURN(float* kv_a, Reserve<float>(b, Buffer::kKvA, T * dim));
  ASSIGN_OR_RETURN(float* o, Reserve<float>(b, Buffer::kO, T * H * dv));
  if (c.q_lora_rank) {
    const int64_t rq = *c.q_lora_rank;
    ASSIGN_OR_RETURN(float* qa, Reserve<float>(b, Buffer::kQa, T * rq));
    const LinearOp from_x[] = {{x, T, &*w.q_a_proj, qa}, {x, T, &w.kv_a_proj_with_mqa, kv_a}};
    RETURN_IF_ERROR(b.Linear(from_x, 2));
    RETURN_IF_ERROR(b.RmsNorm({qa, &w.q_a_layernorm, T, rq, rq, rq, qa}));
    const LinearOp q_b{qa, T, &*w.q_b_proj, q};
    RETURN_IF_ERROR(b.Linear(&q_b, 1));
  } else {
    const LinearOp from_x[] = {{x, T, &*w.q_proj, q}, {x, T, &w.kv_a_proj_with_mqa, kv_a}};
    RETURN_IF_ERROR(b.Linear(from_x, 2));
  }
  // kv_a becomes the cached latent: RMSNorm(c_kv) and the rotated k_pe.
  RETURN_IF_ERROR(b.RmsNorm({kv_a, &w.kv_a_layernorm, T, rkv, dim, dim, kv_a}));
  RETURN_IF_ERROR(b.Rope({kv_a + rkv, 1, dim, dim}));
  RETURN_IF_ERROR(b.Rope({q + dn, H, H * qk, qk}));
  RETURN_IF_ERROR(b.KvWrite(layer, kv_a));
  const MlaOp mla{layer, &w, q, o};
  if (std::find(absorbed.begin(), absorbed.end(), false) != absorbed.end()) RETURN_IF_ERROR(b.MlaNaive(mla));
  if (std::find(absorbed.begin(), absorbed.end(), true) != absorbed.end()) RETURN_IF_ERROR(b.MlaAbsorbed(mla));
  const LinearOp o_proj{o, T, &w.o_proj, y};
  return b.Linear(&o_proj, 1);
}

// DeepSeekMoE of the normed input into the sublayer output: the gate, then the routed experts
// here or, with an exchange, wherever they are placed, summed in slot order, plus the shared
// experts.
absl::Status DeepSeekModel::Moe(Backend& b, int64_t layer, int64_t T, const MoeContext& moe) const {
  const ModelConfig& c = weights_.config;
  const LayerWeights& w = weights_.layers[layer];
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  ExpertExchange* exchange = moe.exchanges != nullptr ? (*moe.exchanges)[layer].get() : nullptr;
  std::vector<int64_t>* load = moe.load != nullptr ? &(*moe.load)[layer] : nullptr;
  if (exchange == nullptr && T == 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(float* x, Reserve<float>(b, Buffer::kNormed, T * D));
  ASSIGN_OR_RETURN(float* y, Reserve<float>(b, Buffer::kSublayer, T * D));
  ASSIGN_OR_RETURN(float* scores, Reserve<float>(b, Buffer::kGateLogits, T * E));
  ASSIGN_OR_RETURN(int32_t* expert_ids, Reserve<int32_t>(b, Buffer::kExpertIds, T * K));
  ASSIGN_OR_RETURN(float* weights, Reserve<float>(b, Buffer::kExpertWeights, T * K));
  if (T > 0) {
    const LinearOp gate{x, T, &w.gate, scores};
    RETURN_IF_ERROR(b.Linear(&gate, 1));
    RETURN_IF_ERROR(b.Route({scores, &w.e_score_correction_bias, T, expert_ids, weights}));
  }
  if (exchange == nullptr) return b.LocalExperts({&w, x, T, expert_ids, weights, y, load});

  // Expert parallelism: routed rows travel between ranks in host memory. The exchange reads
  // this rank's own rows from x_host in place until Combine.
  const std::string what = absl::StrCat("layer ", layer, " step ", moe.step);
  ASSIGN_OR_RETURN(const void* x_host, b.ToHost(Buffer::kNormed, T * D * sizeof(float)));
  ASSIGN_OR_RETURN(const void* ids_host, b.ToHost(Buffer::kExpertIds, T * K * sizeof(int32_t)));
  const auto* ids = static_cast<const int32_t*>(ids_host);
  if (load != nullptr) {
    load->resize(E, 0);
    for (int64_t i = 0; i < T * K; ++i) ++(*load)[ids[i]];
  }
  ReceivedRows rows;
  RETURN_IF_ERROR(exchange->Dispatch(static_cast<const float*>(x_host), T, K, ids, what, rows));
  const std::vector<float*> out_rows = exchange->CombineOutputs(rows);
  float* shared = nullptr;
  if (w.shared_experts) {
    ASSIGN_OR_RETURN(shared, Reserve<float>(b, Buffer::kSharedOut, T * D));
  }
  RETURN_IF_ERROR(b.ExpertRows({&w, &rows, &out_rows, x, T, shared}));
  std::vector<const float*> slot_rows(T * K);
  RETURN_IF_ERROR(exchange->Combine(what, slot_rows));
  return b.Combine({&slot_rows, weights, shared, T, y});
}

}  // namespace daedalus
