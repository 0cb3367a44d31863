// MakePlan: checks the settings, places experts and traces routing (load_balance), sizes
// memory (memory), then times one step layer by layer (roofline, communication) with the
// micro-batch overlap.
#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "planner/communication.h"
#include "planner/model_shape.h"
#include "planner/plan.h"
#include "planner/roofline.h"

namespace daedalus {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

absl::Status CheckWorkload(const ModelConfig& config, const ClusterConfig& cluster, const Workload& w) {
  if (w.phase == Phase::kPd) return Invalid("phase pd plans two deployments: MakePdPlan (planner/disaggregated.h)");
  if (w.nodes < 0 || w.nodes > cluster.nodes) {
    return Invalid(absl::StrCat("nodes = ", w.nodes, ": the cluster ", cluster.name, " has ", cluster.nodes,
                                " (0 uses them all)"));
  }
  if (w.batch_per_device < 1) return Invalid(absl::StrCat("batch per device must be >= 1, found ", w.batch_per_device));
  if (w.avg_context < 1) return Invalid(absl::StrCat("average context must be >= 1, found ", w.avg_context));
  if (w.prompt_len < 0) return Invalid(absl::StrCat("prompt length must be >= 1, found ", w.prompt_len));
  const int64_t longest = w.phase == Phase::kDecode ? w.avg_context : w.prompt_tokens();
  if (longest > config.max_position_embeddings) {
    return Invalid(absl::StrCat("context ", longest, " exceeds the model's max_position_embeddings ",
                                config.max_position_embeddings));
  }
  if (!(w.cache_hit_rate >= 0 && w.cache_hit_rate < 1)) {
    return Invalid(absl::StrCat("cache hit rate must be in [0, 1), found ", w.cache_hit_rate));
  }
  if (w.micro_batches != 1 && w.micro_batches != 2) {
    return Invalid(absl::StrCat("micro-batches must be 1 or 2, found ", w.micro_batches));
  }
  if (w.weight_dtype != DType::kBF16 && w.weight_dtype != DType::kF8E4M3) return Invalid("weight dtype must be bf16 or fp8");
  if (w.kv_dtype != DType::kBF16 && w.kv_dtype != DType::kF8E4M3) return Invalid("KV dtype must be bf16 or fp8");
  if (w.mtp_acceptance >= 0 && w.phase != Phase::kDecode) return Invalid("MTP acceptance applies to decode only");
  if (w.mtp_acceptance >= 0 && config.num_nextn_predict_layers == 0) {
    return Invalid("MTP acceptance needs a model with an MTP module (num_nextn_predict_layers > 0); this one has none");
  }
  if (!(w.mtp_acceptance <= 1)) return Invalid(absl::StrCat("MTP acceptance must be in [0, 1], found ", w.mtp_acceptance));
  if (!(w.synthetic_skew >= 0)) return Invalid(absl::StrCat("synthetic skew must be >= 0, found ", w.synthetic_skew));
  if (w.busy_devices < 0) return Invalid(absl::StrCat("busy devices must be >= 0, found ", w.busy_devices));
  if (w.redundant_experts < 0) return Invalid(absl::StrCat("redundant experts must be >= 0, found ", w.redundant_experts));
  if (config.n_routed_experts < 1) return Invalid("the model has no routed experts: nothing to plan for expert parallelism");
  return absl::OkStatus();
}

// Sums op times per kind over layers and micro-batches.
struct PartSums {
  std::map<std::string, StepPart> parts;
  std::vector<std::string> order;
  void Add(const OpCost& op, double seconds, double times, bool memory_bound) {
    auto [it, fresh] = parts.try_emplace(op.name);
    if (fresh) {
      it->second.name = op.name;
      order.push_back(op.name);
    }
    it->second.seconds += seconds * times;
    it->second.flops += op.flops * times;
    it->second.bytes += op.bytes * times;
    if (memory_bound) it->second.memory_bound += seconds * times;
  }
};

}  // namespace

const char* PhaseName(Phase phase) {
  return phase == Phase::kPrefill ? "prefill" : phase == Phase::kDecode ? "decode" : "pd";
}

absl::StatusOr<Phase> ParsePhase(const std::string& name) {
  if (name == "prefill") return Phase::kPrefill;
  if (name == "decode") return Phase::kDecode;
  if (name == "pd") return Phase::kPd;
  return Invalid(absl::StrCat("phase \"", name, "\": expected prefill, decode or pd"));
}

absl::StatusOr<DType> ParsePlanDType(const std::string& name) {
  if (name == "bf16") return DType::kBF16;
  if (name == "fp8") return DType::kF8E4M3;
  return Invalid(absl::StrCat("dtype \"", name, "\": expected bf16 or fp8"));
}

const char* PlanDTypeName(DType dtype) { return dtype == DType::kF8E4M3 ? "fp8" : "bf16"; }

absl::StatusOr<Plan> MakePlan(const ModelConfig& config, const ClusterConfig& cluster, const Workload& w,
                              const Efficiency& e, const ExpertLoad& histogram) {
  RETURN_IF_ERROR(CheckWorkload(config, cluster, w));
  const HardwareSpec& hw = cluster.hardware;
  Plan plan;
  plan.cluster_name = cluster.name;
  plan.hardware_name = hw.name;
  plan.workload = w;
  plan.nodes = w.nodes > 0 ? w.nodes : cluster.nodes;
  plan.devices_per_node = cluster.devices_per_node;
  plan.devices = plan.nodes * plan.devices_per_node;
  const int64_t ep = w.ep > 0 ? w.ep : plan.devices;
  plan.workload.ep = ep;
  if (ep < 1 || plan.devices % ep != 0) {
    return Invalid(absl::StrCat("EP ", ep, " does not divide the ", plan.devices, " devices of ", plan.nodes,
                                " node(s) x ", plan.devices_per_node));
  }
  const int64_t dpn = plan.devices_per_node;
  if (ep > dpn ? ep % dpn != 0 : dpn % ep != 0) {
    return Invalid(absl::StrCat("EP ", ep, " must be a multiple or a divisor of the ", dpn,
                                " devices per node, so that each deployment unit holds whole nodes or shares one"));
  }
  const int64_t slots_total = config.n_routed_experts + w.redundant_experts;
  if (slots_total < ep) {
    return Invalid(absl::StrCat("EP ", ep, " exceeds the ", config.n_routed_experts, " routed experts + ",
                                w.redundant_experts, " redundant: some devices would hold no expert; lower the EP ",
                                "degree or add redundant experts"));
  }
  if (w.redundant_experts > config.n_routed_experts * (ep - 1)) {
    return Invalid(absl::StrCat("redundant experts ", w.redundant_experts, " exceed ", config.n_routed_experts * (ep - 1),
                                ": replicas of one expert must sit on distinct devices of the EP ", ep, " unit"));
  }
  plan.units = plan.devices / ep;
  plan.nodes_per_unit = ep >= dpn ? ep / dpn : 0;
  const int ranks_per_node = static_cast<int>(std::min(ep, dpn));
  const bool spans_nodes = ep > dpn;
  const bool decode = w.phase == Phase::kDecode;
  const double mbs = static_cast<double>(w.micro_batches);

  // Tokens computed per device per step, and what each attends to.
  const double prompt = static_cast<double>(w.prompt_tokens());
  const double cached = decode ? 0.0 : std::floor(prompt * w.cache_hit_rate);
  const double computed_per_prompt = prompt - cached;
  const bool mtp = decode && w.mtp_acceptance >= 0;
  // With MTP each sequence feeds the main model two tokens a step: the sampled one and the draft.
  const double step_tokens = decode ? static_cast<double>(w.batch_per_device) * (mtp ? 2 : 1)
                                    : w.batch_per_device * computed_per_prompt;
  MicroBatch mb;
  mb.decode = decode;
  mb.tokens = step_tokens / mbs;
  mb.sequences = decode ? w.batch_per_device / mbs : 0.0;
  mb.attended = decode ? static_cast<double>(w.avg_context) : cached + (computed_per_prompt + 1.0) / 2.0;
  mb.cached_prefix = decode ? 0.0 : w.batch_per_device * cached / mbs;
  mb.weight_dtype = w.weight_dtype;
  mb.kv_dtype = w.kv_dtype;
  plan.tokens_per_micro_batch = std::llround(mb.tokens);

  // Placement and routing: the engine's placement code on the histogram.
  const ExpertLoad load = !histogram.empty()             ? histogram
                          : w.synthetic_skew > 0 ? SyntheticExpertLoad(config, w.synthetic_skew, w.seed)
                                                 : ExpertLoad{};
  ASSIGN_OR_RETURN(plan.routing, SimulateRouting(config, load, static_cast<int>(ep), ranks_per_node,
                                                 static_cast<int>(w.redundant_experts),
                                                 std::max<int64_t>(1, std::llround(mb.tokens)), w.imbalance_samples,
                                                 w.seed));
  mb.expert_slots = static_cast<double>((slots_total + ep - 1) / ep);

  // Memory.
  MemoryRequest mr;
  mr.weight_dtype = w.weight_dtype;
  mr.kv_dtype = w.kv_dtype;
  mr.ep = ep;
  mr.expert_slots = (slots_total + ep - 1) / ep;
  mr.tokens_per_micro_batch = mb.tokens;
  mr.micro_batches = w.micro_batches;
  mr.routed_pairs_per_micro_batch = mb.tokens * config.num_experts_per_tok * plan.routing.imbalance;
  mr.low_latency_all_to_all = decode;
  mr.naive_attention = !decode;
  mr.attended_tokens_per_micro_batch = mb.tokens + mb.cached_prefix;
  mr.logits_rows_per_micro_batch = decode ? mb.tokens : w.batch_per_device / mbs;
  mr.sequences = w.batch_per_device;
  mr.tokens_per_sequence = decode ? w.avg_context : w.prompt_tokens();
  mr.mtp_layers = mtp ? 1 : 0;  // the one module that drafts
  ASSIGN_OR_RETURN(plan.memory, PlanMemory(config, hw, e, mr));
  plan.kv_bytes_per_token = KvBytesPerToken(config, w.kv_dtype);
  plan.kv_bytes_per_token_mha =
      MhaKvBytesPerToken(config, static_cast<double>(plan.kv_bytes_per_token) /
                                     (static_cast<double>(config.kv_cache_dim()) * config.num_hidden_layers));

  // One step, layer by layer: computation of all micro-batches, their dispatch and combine,
  // and the overlap between the two.
  const ModelShape shape = ShapeOf(config);
  const AllToAllKind kind = decode ? AllToAllKind::kLowLatency : AllToAllKind::kNormal;
  const AllToAllVolume dispatch = AllToAllBytes(kind, plan.routing, mb.tokens, DispatchRowBytes(config, w.weight_dtype));
  const AllToAllVolume combine = AllToAllBytes(kind, plan.routing, mb.tokens, CombineRowBytes(config));
  const double busy_share = w.busy_devices > 0 ? std::min(1.0, static_cast<double>(w.busy_devices) / ep) : 1.0;
  PartSums parts;
  // One layer over micro-batches of `mb_tokens` tokens (the MTP module: the last MoE layer's
  // shape, over one token per sequence).
  auto add_layer = [&](int64_t l, double mb_tokens, bool counted) {
    const bool moe = config.is_moe_layer(l);
    const double imbalance = moe ? plan.routing.layer_imbalance[l] : 1.0;
    MicroBatch layer_mb = mb;
    layer_mb.tokens = mb_tokens;
    layer_mb.routed_pairs = mb_tokens * config.num_experts_per_tok * imbalance * busy_share;
    double compute = 0;
    const bool first_moe = counted && moe && plan.moe_layer.empty();
    for (const OpCost& op : LayerOps(config, shape, l, layer_mb, hw)) {
      const double s = RooflineSeconds(op, hw, e);
      compute += s * mbs;
      parts.Add(op, s, mbs, MemoryBound(op, hw, e));
      plan.flops_per_step += op.flops * mbs;
      if (first_moe) plan.moe_layer.push_back({op.name, s, op.flops, op.bytes, MemoryBound(op, hw, e) ? s : 0.0});
    }
    compute += e.layer_overhead_s * mbs;
    parts.Add(OpCost{"other kernels"}, e.layer_overhead_s, mbs, false);
    double comm = 0;
    if (moe && ep > 1) {
      const AllToAllVolume d = mb_tokens == mb.tokens ? dispatch
                               : AllToAllBytes(kind, plan.routing, mb_tokens, DispatchRowBytes(config, w.weight_dtype));
      const AllToAllVolume c = mb_tokens == mb.tokens ? combine : AllToAllBytes(kind, plan.routing, mb_tokens, CombineRowBytes(config));
      const double dispatch_s = AllToAllSeconds(kind, d, imbalance, spans_nodes, hw, e);
      const double combine_s = AllToAllSeconds(kind, c, imbalance, spans_nodes, hw, e);
      comm = mbs * (dispatch_s + combine_s);
      if (first_moe) {
        plan.layer_dispatch_s = dispatch_s;
        plan.layer_combine_s = combine_s;
        plan.layer_dispatch_bytes = d.nic_bytes + d.intra_node_bytes;
        plan.layer_combine_bytes = c.nic_bytes + c.intra_node_bytes;
      }
      plan.dispatch_nic_bytes += mbs * d.nic_bytes;
      plan.dispatch_intra_bytes += mbs * d.intra_node_bytes;
      plan.combine_nic_bytes += mbs * c.nic_bytes;
      plan.combine_intra_bytes += mbs * c.intra_node_bytes;
    }
    const double layer_s =
        w.micro_batches >= 2 ? std::max(compute, comm) + (1.0 - e.overlap) * std::min(compute, comm) : compute + comm;
    plan.compute_s += compute;
    plan.communication_s += comm;
    plan.hidden_s += compute + comm - layer_s;
    plan.step_s += layer_s;
  };
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) add_layer(l, mb.tokens, true);
  if (mtp) add_layer(config.num_hidden_layers - 1, mb.tokens / 2, false);
  // lm_head: every decoded token (with MTP also the draft's position, and the module's own
  // draft: three rows per sequence); in prefill only each prompt's last position.
  const OpCost head = LmHeadOp(config, shape, decode ? mb.tokens * (mtp ? 1.5 : 1.0) : w.batch_per_device / mbs, hw);
  const double head_s = RooflineSeconds(head, hw, e);
  parts.Add(head, head_s, mbs, MemoryBound(head, hw, e));
  plan.flops_per_step += head.flops * mbs;
  plan.compute_s += head_s * mbs;
  plan.step_s += head_s * mbs;
  for (const std::string& name : parts.order) plan.compute.push_back(parts.parts[name]);

  if (decode) {
    const double per_step = mtp ? 1.0 + w.mtp_acceptance : 1.0;  // tokens each sequence gains a step
    plan.output_tokens_per_s_per_device = w.batch_per_device * per_step / plan.step_s;
    plan.itl_s = plan.step_s / per_step;
    // Time to first token: prefilling one prompt per device on the same cluster (queueing
    // and the KV transfer of a disaggregated deployment are not modelled).
    Workload prefill = w;
    prefill.phase = Phase::kPrefill;
    prefill.batch_per_device = 1;
    prefill.mtp_acceptance = -1;
    prefill.prompt_len = w.prompt_tokens();
    ASSIGN_OR_RETURN(Plan first, MakePlan(config, cluster, prefill, e, histogram));
    plan.ttft_s = first.step_s;
  } else {
    plan.input_tokens_per_s_per_device = w.batch_per_device * prompt / plan.step_s;
    plan.ttft_s = plan.step_s;
  }
  return plan;
}

}  // namespace daedalus
