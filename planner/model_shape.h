// What a DeepSeek-V2/V3 model weighs, from its config.json: parameters per part, bytes per
// weight element and per cached token. The published checkpoints' layout: every projection of
// a layer in the weight dtype (FP8 with 128x128 block scales for V3); embeddings, lm_head,
// router gates and norms in BF16. The MTP module (num_nextn_predict_layers) is counted apart
// (mtp_params), for plans that run it.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/model_config.h"

namespace daedalus {

struct ModelShape {
  int64_t layers = 0;
  int64_t dense_layers = 0;               // layers with a dense MLP
  int64_t moe_layers = 0;
  int64_t attention_params = 0;           // one layer's MLA projections: q (LoRA or plain), kv_a, kv_b, o
  int64_t dense_mlp_params = 0;           // one dense layer's gate, up and down projections
  int64_t expert_params = 0;              // one routed or shared expert
  int64_t gate_params = 0;                // one MoE layer's router (n_routed_experts x hidden)
  int64_t embedding_params = 0;           // embed_tokens; lm_head is as large
  int64_t norm_params = 0;                // every RMSNorm weight in the model

  // One MTP module beside the MoE layer it holds (counted in attention, gate and expert
  // params): its eh_proj (2 hidden -> hidden, a projection in the weight dtype) and its norms
  // (enorm, hnorm, the shared head's, and the layer's own). It shares the main model's
  // embedding and lm_head.
  int64_t mtp_proj_params = 0;
  int64_t mtp_norm_params = 0;

  // Everything the main model holds (671B for V3, 236B for V2, 15.7B for V2-Lite).
  double total_params(int64_t n_routed_experts, int64_t n_shared_experts) const;
  // What one MTP module holds beyond the main model: 11.6B for V3 (DeepSeek's weight notes:
  // "11.5B unique parameters", the embedding and output head being shared).
  double mtp_params(int64_t n_routed_experts, int64_t n_shared_experts) const;
};

ModelShape ShapeOf(const ModelConfig& config);

// Bytes per weight element: 2 for BF16; 1 + 4 / (128 x 128) for FP8 with one float32 scale per
// 128x128 block.
double WeightBytes(DType dtype);

// Latent KV cache bytes per token over all layers: KvRowBytes (core/kv_row.h, the cache's own
// row format) x layers. BF16: V3 70,272, V2 69,120; FP8 (FlashMLA's format): V3 40,016.
int64_t KvBytesPerToken(const ModelConfig& config, DType kv_dtype);
// The same model with multi-head attention: 2 x n_h x d_h x layers elements (DeepSeek-V2
// report, Table 1), d_h = qk_nope_head_dim.
int64_t MhaKvBytesPerToken(const ModelConfig& config, double bytes_per_element);
// Grouped-query attention: 2 x kv_heads x head_dim x layers elements.
int64_t GqaKvBytesPerToken(int64_t layers, int64_t kv_heads, int64_t head_dim, double bytes_per_element);

}  // namespace daedalus
