// Capacity planning: given a model, a cluster and a workload, predict memory per device,
// step time, throughput and latency of an expert-parallel deployment (data-parallel attention,
// expert-parallel MoE, as Daedalus and DeepSeek's own system run it).
//
//   ASSIGN_OR_RETURN(Plan plan, MakePlan(config, cluster, workload, Efficiency{}, histogram));
//
// The step time comes from a roofline per operation (FLOPs and bytes against the device's
// peaks times the factors in planner/efficiency.h), the all-to-all volumes that routing
// produces under the cluster's expert placement (computed by routing/placement, the same code
// the engine runs), and the overlap of the two when micro-batches are used. The slowest rank
// sets the pace. See planner/README.md for every assumption.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/cluster_config.h"
#include "core/dtype.h"
#include "core/model_config.h"
#include "planner/efficiency.h"
#include "planner/load_balance.h"
#include "planner/memory.h"
#include "routing/expert_load.h"

namespace daedalus {

// kPd: disaggregated prefill and decode (planner/disaggregated.h), planned as one of each.
enum class Phase { kPrefill, kDecode, kPd };
const char* PhaseName(Phase phase);
absl::StatusOr<Phase> ParsePhase(const std::string& name);
// "bf16" or "fp8".
absl::StatusOr<DType> ParsePlanDType(const std::string& name);
const char* PlanDTypeName(DType dtype);

struct Workload {
  Phase phase = Phase::kDecode;
  int64_t nodes = 0;               // nodes of the cluster to use; 0 = all
  int64_t ep = 0;                  // expert-parallel degree (= data-parallel attention degree); 0 = every device used
  int64_t redundant_experts = 0;   // extra replicas of hot experts per deployment unit
  int64_t batch_per_device = 64;   // decode: sequences in flight; prefill: prompts per step
  int64_t avg_context = 4096;      // decode: mean KV length per sequence
  int64_t prompt_len = 0;          // prefill: tokens per prompt; 0 = avg_context
  double cache_hit_rate = 0;       // prefill: fraction of prompt tokens whose KV is already cached
  // Decode with multi-token prediction (one draft token per step, DeepSeek-V3's MTP module):
  // each sequence feeds the main model its sampled token and the draft, the MTP module (one
  // more MoE layer) drafts the next, and the draft is accepted with this probability, so a step
  // yields 1 + A tokens per sequence. Negative: no MTP.
  double mtp_acceptance = -1;
  // Devices of the EP group that hold sequences (0: all). The others only serve experts, so each
  // device's routed pairs shrink to this share (fewer clients than workers).
  int64_t busy_devices = 0;
  DType weight_dtype = DType::kF8E4M3;  // layer projections; embeddings, lm_head and gates stay BF16
  DType kv_dtype = DType::kBF16;
  int64_t micro_batches = 2;       // 2 overlaps one micro-batch's all-to-all with the other's compute
  double synthetic_skew = 0;       // expert popularity ~ 1 / rank^skew when no histogram is given
  // kPd only: the nodes of each side (together at most the cluster's), the tokens each request
  // generates, and the prefill side's prompts per device per step (batch_per_device is the
  // decode side's sequences).
  int64_t prefill_nodes = 0, decode_nodes = 0, output_len = 0;
  int64_t prefill_batch_per_device = 4;
  int imbalance_samples = 16;      // routing draws per MoE layer for the load imbalance
  uint64_t seed = 1;

  int64_t prompt_tokens() const { return prompt_len > 0 ? prompt_len : avg_context; }
};

// Time of one kind of operation over a whole step on the slowest device: all layers, all
// micro-batches.
struct StepPart {
  std::string name;
  double seconds = 0;
  double flops = 0;
  double bytes = 0;          // device-memory traffic
  double memory_bound = 0;   // share of `seconds` spent where bytes, not FLOPs, set the time
};

struct Plan {
  // What was planned, resolved.
  std::string cluster_name;
  std::string hardware_name;
  Workload workload;
  int64_t nodes = 0;              // nodes used
  int64_t devices_per_node = 0;
  int64_t devices = 0;            // devices used
  int64_t units = 0;              // independent deployment units of `ep` devices
  int64_t nodes_per_unit = 0;     // 0 when a unit is part of one node
  int64_t tokens_per_micro_batch = 0;  // per device (prefill: prompt tokens computed)

  int64_t kv_bytes_per_token = 0;
  int64_t kv_bytes_per_token_mha = 0;  // the same model with multi-head attention, same dtype
  MemoryBreakdown memory;
  RoutingStats routing;

  // One MoE layer (the first), one micro-batch, slowest device: its operations and one
  // dispatch and one combine call.
  std::vector<StepPart> moe_layer;
  double layer_dispatch_s = 0, layer_combine_s = 0;
  double layer_dispatch_bytes = 0, layer_combine_bytes = 0;  // NIC + link, sent per device

  // Per step, slowest device.
  std::vector<StepPart> compute;  // by kind of operation
  double compute_s = 0;
  double communication_s = 0;     // dispatch + combine, all MoE layers and micro-batches
  double hidden_s = 0;            // communication or computation hidden by micro-batch overlap
  double step_s = 0;
  double dispatch_nic_bytes = 0, dispatch_intra_bytes = 0;  // sent per device per step
  double combine_nic_bytes = 0, combine_intra_bytes = 0;
  double flops_per_step = 0;      // whole device, all operations

  // Results.
  double input_tokens_per_s_per_device = 0;   // prefill (prompt tokens, cache hits included)
  double output_tokens_per_s_per_device = 0;  // decode
  double ttft_s = 0;  // prefill: the step that holds the prompt; decode: prefilling one prompt on this cluster
  double itl_s = 0;   // decode: one step
  double input_tokens_per_s_per_node() const { return input_tokens_per_s_per_device * devices_per_node; }
  double output_tokens_per_s_per_node() const { return output_tokens_per_s_per_device * devices_per_node; }
};

// `histogram` (from `run --expert-load-out`) may be empty: then experts are equally popular,
// or skewed by workload.synthetic_skew. Errors: invalid settings (EP that does not divide the
// devices, unknown dtype, ...) are InvalidArgument; a plan that does not fit in device memory
// is ResourceExhausted with what it needs and what is free.
absl::StatusOr<Plan> MakePlan(const ModelConfig& config, const ClusterConfig& cluster, const Workload& workload,
                              const Efficiency& efficiency, const ExpertLoad& histogram);

}  // namespace daedalus
