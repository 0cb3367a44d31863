#include "planner/model_shape.h"

#include <cmath>

#include "core/kv_row.h"

namespace daedalus {

double ModelShape::total_params(int64_t n_routed_experts, int64_t n_shared_experts) const {
  return static_cast<double>(layers) * attention_params + static_cast<double>(dense_layers) * dense_mlp_params +
         static_cast<double>(moe_layers) * ((n_routed_experts + n_shared_experts) * expert_params + gate_params) +
         2.0 * embedding_params + norm_params;
}

double ModelShape::mtp_params(int64_t n_routed_experts, int64_t n_shared_experts) const {
  return static_cast<double>(attention_params) + (n_routed_experts + n_shared_experts) * static_cast<double>(expert_params) +
         gate_params + mtp_proj_params + mtp_norm_params;
}

ModelShape ShapeOf(const ModelConfig& c) {
  ModelShape s;
  s.layers = c.num_hidden_layers;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) (c.is_moe_layer(l) ? s.moe_layers : s.dense_layers)++;
  const int64_t h = c.hidden_size, n = c.num_attention_heads;
  const int64_t q = c.q_lora_rank ? h * *c.q_lora_rank + *c.q_lora_rank * n * c.qk_head_dim() : h * n * c.qk_head_dim();
  const int64_t kv_a = h * (c.kv_lora_rank + c.qk_rope_head_dim);
  const int64_t kv_b = c.kv_lora_rank * n * (c.qk_nope_head_dim + c.v_head_dim);
  const int64_t o = n * c.v_head_dim * h;
  s.attention_params = q + kv_a + kv_b + o;
  s.dense_mlp_params = 3 * h * c.intermediate_size;
  s.expert_params = 3 * h * c.moe_intermediate_size;
  s.gate_params = c.n_routed_experts * h;
  s.embedding_params = c.vocab_size * h;
  // Per layer: input and post-attention norms, the kv_a norm and (with q LoRA) the q_a norm;
  // then the final norm.
  const int64_t per_layer = 2 * h + c.kv_lora_rank + (c.q_lora_rank ? *c.q_lora_rank : 0);
  s.norm_params = s.layers * per_layer + h;
  s.mtp_proj_params = 2 * h * h;
  s.mtp_norm_params = 3 * h + per_layer;
  return s;
}

double WeightBytes(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4.0;
    case DType::kBF16: return 2.0;
    case DType::kF8E4M3: return 1.0 + 4.0 / (128.0 * 128.0);
  }
  return 2.0;
}

int64_t KvBytesPerToken(const ModelConfig& c, DType kv_dtype) { return KvRowBytes(c, kv_dtype) * c.num_hidden_layers; }

int64_t MhaKvBytesPerToken(const ModelConfig& c, double bytes_per_element) {
  return GqaKvBytesPerToken(c.num_hidden_layers, c.num_attention_heads, c.qk_nope_head_dim, bytes_per_element);
}

int64_t GqaKvBytesPerToken(int64_t layers, int64_t kv_heads, int64_t head_dim, double bytes_per_element) {
  return std::llround(2.0 * kv_heads * head_dim * layers * bytes_per_element);
}

}  // namespace daedalus
