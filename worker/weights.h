// The model's weights, loaded from a Hugging Face checkpoint by the published tensor names.
// F32 and BF16 tensors are used in place (mmapped); FP8 e4m3 block-scaled tensors are
// dequantized once to BF16; norms and the correction bias become float vectors.
// Every tensor's dtype and shape is checked against the config: a mismatch is an error
// naming the tensor, the file, and what was expected.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "core/weight_memory.h"
#include "kernels/linear.h"

namespace daedalus {

struct MlpWeights {  // down · (silu(gate · x) ⊙ (up · x))
  WeightView gate_proj, up_proj, down_proj;
};

struct AttentionWeights {
  std::optional<WeightView> q_a_proj, q_b_proj, q_proj;  // q_proj when q_lora_rank is null
  std::vector<float> q_a_layernorm;
  WeightView kv_a_proj_with_mqa;  // [kv_lora_rank + qk_rope_head_dim, hidden]
  std::vector<float> kv_a_layernorm;
  WeightView kv_b_proj;           // [heads · (qk_nope + v_head), kv_lora_rank]
  WeightView o_proj;              // [hidden, heads · v_head]
  // Absorbed decode: per head, the k_nope block of kv_b_proj transposed to [kv_lora_rank, qk_nope]
  // so that q_latent = q_nope · W_uk is a Linear. Owned copies in kv_b_proj's dtype (an FP8 one
  // in bf16 where its scale blocks do not fall on head boundaries).
  std::vector<WeightView> w_uk_t;
  // Per head, the v rows of kv_b_proj: [v_head_dim, kv_lora_rank], copied the same way.
  std::vector<WeightView> w_uv;
};

struct LayerWeights {
  std::vector<float> input_layernorm, post_attention_layernorm;
  AttentionWeights attn;
  bool moe = false;
  MlpWeights dense;                         // when !moe
  WeightView gate;                          // mlp.gate.weight [n_routed_experts, hidden]
  std::vector<float> e_score_correction_bias;  // empty when the checkpoint has none
  std::vector<MlpWeights> experts;          // routed, by expert id (empty where not loaded)
  std::optional<MlpWeights> shared_experts;
};

struct ModelWeights {
  ModelConfig config;
  WeightView embed_tokens;  // [vocab, hidden]
  std::vector<float> norm;
  WeightView lm_head;       // [vocab, hidden]
  std::vector<LayerWeights> layers;

  // Bytes of weights one batch-1 decode step reads: everything but the embedding table and
  // the routed experts, plus num_experts_per_tok experts per MoE layer.
  size_t ActiveBytesPerToken() const;
  size_t ActiveParametersPerToken() const;  // the same weights counted as multiply-adds
  // Of those, the last layer's feed-forward (gate, experts and shared experts, or the dense MLP),
  // which a prompt runs on its logit rows alone (worker/model.cc).
  size_t LastFeedForwardParametersPerToken() const;
  size_t DenseBytes() const;  // what every step reads whatever the routing: no routed expert
  size_t TotalBytes() const;
  // The dtype the layer projections are kept in (lm_head and embeddings may differ).
  DType projection_dtype() const { return layers.back().attn.o_proj.dtype; }

  std::unique_ptr<Checkpoint> checkpoint;      // owns the mmapped files
  std::vector<WeightBuffer> owned;     // packed, dequantized and transposed tensors (on huge pages)
  // The routed experts' own packed copies, by (layer, expert): freed with the expert.
  std::map<std::pair<int64_t, int64_t>, std::vector<WeightBuffer>> expert_owned;
};

// Which routed experts to load: (layer, expert) → true to load. Empty: all of them.
using ExpertFilter = std::function<bool(int64_t layer, int64_t expert)>;

// Routed experts read for a new placement, held apart from the model until installed.
struct StagedExperts {
  struct Expert {
    int64_t layer = 0, expert = 0;
    MlpWeights weights;
    std::vector<WeightBuffer> owned;
  };
  std::vector<Expert> experts;
};

// Reads the routed experts `want` names that `model` does not hold, from the checkpoint it keeps
// open, without changing `model`: safe on a thread of its own beside steps that use `model`.
absl::StatusOr<StagedExperts> ReadMissingExperts(const ModelWeights& model, const ExpertFilter& want);
// Installs `staged` (between steps) and frees every routed expert `keep` does not name.
void InstallExperts(ModelWeights& model, StagedExperts staged, const ExpertFilter& keep);
// Both at once: the model then holds exactly the routed experts `want` names.
absl::Status LoadMissingExperts(ModelWeights& model, const ExpertFilter& want);

// Loads `dir` (config.json + safetensors). Routed experts the filter rejects are not read at
// all (their MlpWeights stay empty). The returned weights keep the files mapped.
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(const std::string& dir,
                                                               const ExpertFilter& want_expert = {});

}  // namespace daedalus
