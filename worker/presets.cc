#include "worker/presets.h"

#include "absl/strings/str_cat.h"

namespace daedalus {
namespace {

// DeepSeek-V3's routing and attention shapes, scaled down.
ModelConfig V3Like() {
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.scoring_func = "sigmoid";
  c.topk_method = "noaux_tc";
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 4096;
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  return c;
}

}  // namespace

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  ModelConfig c = V3Like();
  if (name == "tiny") {  // ~1.3M parameters: 3 layers, 16 experts in 4 groups
    c.vocab_size = 512;
    c.hidden_size = 128;
    c.intermediate_size = 256;
    c.moe_intermediate_size = 64;
    c.num_hidden_layers = 3;
    c.first_k_dense_replace = 1;
    c.num_attention_heads = 4;
    c.q_lora_rank = 64;
    c.kv_lora_rank = 64;
    c.qk_nope_head_dim = 32;
    c.qk_rope_head_dim = 16;
    c.v_head_dim = 32;
    c.n_routed_experts = 16;
    c.n_shared_experts = 1;
    c.num_experts_per_tok = 4;
    c.n_group = 4;
    c.topk_group = 2;
  } else if (name == "small") {  // ~110M parameters, for the demo
    c.vocab_size = 32000;
    c.hidden_size = 768;
    c.intermediate_size = 2048;
    c.moe_intermediate_size = 256;
    c.num_hidden_layers = 6;
    c.first_k_dense_replace = 1;
    c.num_attention_heads = 12;
    c.q_lora_rank = 384;
    c.kv_lora_rank = 256;
    c.qk_nope_head_dim = 64;
    c.qk_rope_head_dim = 32;
    c.v_head_dim = 64;
    c.n_routed_experts = 16;
    c.n_shared_experts = 2;
    c.num_experts_per_tok = 4;
    c.n_group = 4;
    c.topk_group = 2;
  } else if (name == "bench") {  // the speed-figure shapes
    c.vocab_size = 32000;
    c.hidden_size = 1024;
    c.intermediate_size = 2048;
    c.moe_intermediate_size = 512;
    c.num_hidden_layers = 8;
    c.first_k_dense_replace = 1;
    c.num_attention_heads = 8;
    c.q_lora_rank = 384;
    c.kv_lora_rank = 256;
    c.qk_nope_head_dim = 64;
    c.qk_rope_head_dim = 32;
    c.v_head_dim = 64;
    c.n_routed_experts = 32;
    c.n_shared_experts = 2;
    c.num_experts_per_tok = 4;
    c.n_group = 4;
    c.topk_group = 2;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown preset \"", name, "\" (expected tiny, small or bench)"));
  }
  return c;
}

}  // namespace daedalus
