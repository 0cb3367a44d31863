// FLOPs and memory traffic of one micro-batch through one layer on one device, and their time
// on a roofline: max(FLOPs / (peak x efficiency), bytes / (bandwidth x efficiency)).
//
// Decode runs MLA absorbed (W_UK folded into the query, W_UV into the output: attention reads
// the latent cache directly, [kv_lora_rank + qk_rope_head_dim] per cached token per layer);
// prefill runs it naive (the latent decompressed to per-head K and V, then ordinary causal
// attention over qk_head_dim and v_head_dim). GEMMs run at the FP8 peak with FP8 weights
// (activations quantised per token, as DeepSeek serves) and at the BF16 peak otherwise; core
// attention, the router and lm_head at the BF16 peak.
#pragma once

#include <string>
#include <vector>

#include "core/cluster_config.h"
#include "core/dtype.h"
#include "core/model_config.h"
#include "planner/efficiency.h"
#include "planner/model_shape.h"

namespace daedalus {

struct OpCost {
  const char* name = "";
  double flops = 0;
  double bytes = 0;          // device-memory traffic
  double peak_flops = 0;     // the device peak this op runs against
  bool attention = false;    // Efficiency::attention, else Efficiency::gemm
};

double RooflineSeconds(const OpCost& op, const HardwareSpec& hardware, const Efficiency& efficiency);
// True when the bytes, not the FLOPs, set the op's time.
bool MemoryBound(const OpCost& op, const HardwareSpec& hardware, const Efficiency& efficiency);

struct MicroBatch {
  bool decode = true;
  double tokens = 0;             // tokens computed
  double sequences = 0;          // decode: the sequences those tokens belong to (fewer with MTP drafts)
  double attended = 0;           // decode: cached tokens per sequence; prefill: mean positions each token attends
  double cached_prefix = 0;      // prefill: cached tokens decompressed per micro-batch (cache hits)
  double routed_pairs = 0;       // (token, expert) pairs the device serves (busiest device)
  double expert_slots = 0;       // routed experts held per MoE layer
  DType weight_dtype = DType::kF8E4M3;
  DType kv_dtype = DType::kBF16;
};

// The ops of `layer` for one micro-batch (names: "attention projections", "core attention",
// "dense MLP", "router", "shared experts", "routed experts").
std::vector<OpCost> LayerOps(const ModelConfig& config, const ModelShape& shape, int64_t layer, const MicroBatch& mb,
                             const HardwareSpec& hardware);
// lm_head over `rows` tokens.
OpCost LmHeadOp(const ModelConfig& config, const ModelShape& shape, double rows, const HardwareSpec& hardware);

}  // namespace daedalus
