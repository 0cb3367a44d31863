// The model's Hugging Face `config.json` (DeepSeek-V2 / V3 family), parsed and validated once.
// Field names are the config's own.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace daedalus {

struct RopeScaling {  // rope_scaling with "type": "yarn"
  double factor = 1.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

// YaRN's attention-scale correction: 0.1 · mscale · ln(factor) + 1 when factor > 1, else 1.
double YarnMscale(double factor, double mscale);

struct ModelConfig {
  std::string model_type = "deepseek_v3";  // deepseek_v3 | deepseek_v2
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;       // dense MLP layers
  int64_t moe_intermediate_size = 0;   // one routed expert
  int64_t num_hidden_layers = 0;
  int64_t num_nextn_predict_layers = 0;  // MTP layers after the last one; not run
  int64_t num_attention_heads = 0;
  int64_t n_shared_experts = 0;
  int64_t n_routed_experts = 0;
  double routed_scaling_factor = 1.0;
  int64_t kv_lora_rank = 0;
  std::optional<int64_t> q_lora_rank;  // null in V2-Lite: q_proj instead of q_a/q_b
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t qk_nope_head_dim = 0;
  std::string topk_method = "noaux_tc";  // noaux_tc | group_limited_greedy | greedy
  int64_t n_group = 1;
  int64_t topk_group = 1;
  int64_t num_experts_per_tok = 1;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  bool norm_topk_prob = true;
  std::string scoring_func = "sigmoid";  // sigmoid | softmax
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 4096;
  std::optional<RopeScaling> rope_scaling;
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;
  bool fp8 = false;  // quantization_config fmt e4m3 with 128×128 blocks

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  // Latent KV cache elements per token per layer: c_kv then k_pe.
  int64_t kv_cache_dim() const { return kv_lora_rank + qk_rope_head_dim; }
  // Softmax scale of attention, YaRN's mscale² included.
  double softmax_scale() const;

  // Parses and validates; errors name `source` (the file) and the field.
  static absl::StatusOr<ModelConfig> FromJson(const nlohmann::json& json, const std::string& source);
  static absl::StatusOr<ModelConfig> Load(const std::string& path);
  absl::Status Validate(const std::string& source) const;
  // Every field a published DeepSeek-V3 config.json has.
  nlohmann::ordered_json ToJson() const;
};

}  // namespace daedalus
