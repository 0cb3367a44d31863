#include "worker/model.h"

#include "core/buffer.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/ops.h"

namespace daedalus {

DeepSeekModel::DeepSeekModel(const ModelWeights& weights, AttentionPath path)
    : weights_(weights), path_(path), rope_(weights.config) {}

absl::Status DeepSeekModel::Forward(const ForwardBatch& batch, PagedKvCache& cache, float* logits,
                                    const MoeContext& moe) const {
  const ModelConfig& c = weights_.config;
  const int64_t T = static_cast<int64_t>(batch.token_ids.size()), D = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  if (T == 0 && moe.exchanges == nullptr) return absl::OkStatus();

  FloatBuffer h(T * D), x(T * D), y(T * D);  // residual stream, normed input, sublayer output
  const size_t elem = DTypeSize(weights_.embed_tokens.dtype);
  for (int64_t t = 0; t < T; ++t) {
    const auto* row = static_cast<const uint8_t*>(weights_.embed_tokens.data) + batch.token_ids[t] * D * elem;
    if (weights_.embed_tokens.dtype == DType::kF32) std::memcpy(&h[t * D], row, D * 4);
    else Bf16ToF32(reinterpret_cast<const bf16*>(row), &h[t * D], D);
  }
  RopeAngles angles;
  const int64_t pairs = rope_.pairs();
  angles.cos.resize(T * pairs);
  angles.sin.resize(T * pairs);
  for (const SequenceSlice& s : batch.slices)
    for (int64_t t = 0; t < s.n_tokens; ++t)
      rope_.Angles(s.start_pos + t, &angles.cos[(s.offset + t) * pairs], &angles.sin[(s.offset + t) * pairs]);

  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    RmsNorm(h.data(), w.input_layernorm.data(), T, D, eps, x.data(), D, D);
    MlaForward(c, w.attn, l, x.data(), batch, angles, path_, cache, y.data());
    for (int64_t i = 0; i < T * D; ++i) h[i] += y[i];
    RmsNorm(h.data(), w.post_attention_layernorm.data(), T, D, eps, x.data(), D, D);
    if (w.moe) {
      ExpertExchange* exchange = moe.exchanges != nullptr ? (*moe.exchanges)[l].get() : nullptr;
      std::vector<int64_t>* load = moe.load != nullptr ? &(*moe.load)[l] : nullptr;
      RETURN_IF_ERROR(MoeForward(c, w, x.data(), T, y.data(), exchange, load, absl::StrCat("layer ", l, " step ", moe.step)));
    } else {
      MlpForward(w.dense, x.data(), T, y.data());
    }
    for (int64_t i = 0; i < T * D; ++i) h[i] += y[i];
  }
  const int64_t R = static_cast<int64_t>(batch.logit_rows.size());
  FloatBuffer final_x(R * D);
  for (int64_t r = 0; r < R; ++r)
    RmsNorm(&h[batch.logit_rows[r] * D], weights_.norm.data(), 1, D, eps, &final_x[r * D], D, D);
  Linear(final_x.data(), R, weights_.lm_head, logits);
  return absl::OkStatus();
}

}  // namespace daedalus
