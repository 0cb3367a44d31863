#include "planner/roofline.h"

#include <algorithm>
#include <cmath>

#include "core/kv_row.h"

namespace daedalus {

double RooflineSeconds(const OpCost& op, const HardwareSpec& hw, const Efficiency& e) {
  const double compute = op.flops / (op.peak_flops * (op.attention ? e.attention : e.gemm));
  const double memory = op.bytes / (hw.memory_bandwidth * e.memory_bandwidth);
  return std::max(compute, memory);
}

bool MemoryBound(const OpCost& op, const HardwareSpec& hw, const Efficiency& e) {
  return op.bytes / (hw.memory_bandwidth * e.memory_bandwidth) >
         op.flops / (op.peak_flops * (op.attention ? e.attention : e.gemm));
}

std::vector<OpCost> LayerOps(const ModelConfig& c, const ModelShape& s, int64_t layer, const MicroBatch& mb,
                             const HardwareSpec& hw) {
  const double wb = WeightBytes(mb.weight_dtype);
  const double gemm_peak = mb.weight_dtype == DType::kF8E4M3 ? hw.fp8_flops : hw.bf16_flops;
  const double heads = static_cast<double>(c.num_attention_heads);
  const double m = mb.tokens;
  std::vector<OpCost> ops;

  OpCost proj{"attention projections", 2.0 * m * s.attention_params, s.attention_params * wb, gemm_peak, false};
  // Cache hits: the cached prefix's latent is decompressed by kv_b for naive attention.
  const double kv_b = static_cast<double>(c.kv_lora_rank) * heads * (c.qk_nope_head_dim + c.v_head_dim);
  proj.flops += 2.0 * mb.cached_prefix * kv_b;
  ops.push_back(proj);

  // Attention's products run on the float unit of a CPU kernel tier (fp32_flops, when a
  // calibrated hardware file gives it), on bf16 tensor cores on a GPU.
  OpCost core{"core attention", 0, 0, hw.fp32_flops > 0 ? hw.fp32_flops : hw.bf16_flops, true};
  if (mb.decode) {
    // Scores over [kv_lora_rank + qk_rope_head_dim], output over kv_lora_rank, per head and
    // cached token; the cache is read once per sequence, however many of its tokens (an MTP
    // draft beside the sampled one) attend to it.
    core.flops = 2.0 * m * heads * mb.attended * (2.0 * c.kv_lora_rank + c.qk_rope_head_dim);
    core.bytes = mb.sequences * mb.attended * static_cast<double>(KvRowBytes(c, mb.kv_dtype));
  } else {
    core.flops = 2.0 * m * heads * mb.attended * static_cast<double>(c.qk_head_dim() + c.v_head_dim);
    core.bytes = (m + mb.cached_prefix) * heads * static_cast<double>(c.qk_head_dim() + c.v_head_dim) * 2.0 * 2.0;
  }
  ops.push_back(core);

  if (!c.is_moe_layer(layer)) {
    ops.push_back({"dense MLP", 2.0 * m * s.dense_mlp_params, s.dense_mlp_params * wb, gemm_peak, false});
    return ops;
  }
  ops.push_back({"router", 2.0 * m * s.gate_params, s.gate_params * 2.0, hw.bf16_flops, false});
  if (c.n_shared_experts > 0) {
    const double p = static_cast<double>(c.n_shared_experts) * s.expert_params;
    ops.push_back({"shared experts", 2.0 * m * p, p * wb, gemm_peak, false});
  }
  // Only experts that receive a token are read: with r pairs over k slots about
  // k (1 - e^(-r/k)) of them do.
  const double touched =
      mb.expert_slots > 0 ? mb.expert_slots * (1.0 - std::exp(-mb.routed_pairs / mb.expert_slots)) : 0.0;
  ops.push_back({"routed experts", 2.0 * mb.routed_pairs * s.expert_params, touched * s.expert_params * wb, gemm_peak,
                 false});
  return ops;
}

OpCost LmHeadOp(const ModelConfig& c, const ModelShape& s, double rows, const HardwareSpec& hw) {
  return {"lm head", 2.0 * rows * s.embedding_params, s.embedding_params * 2.0, hw.bf16_flops, false};
}

}  // namespace daedalus
