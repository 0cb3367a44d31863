#include "planner/report.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "planner/model_shape.h"

namespace daedalus {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// The flat scalar results, in report order; null where the phase has no such figure.
nlohmann::ordered_json FlatResults(const std::string& model_name, const Plan& p) {
  const bool decode = p.workload.phase == Phase::kDecode;
  nlohmann::ordered_json j;
  j["model"] = model_name;
  j["cluster"] = p.cluster_name;
  j["hardware"] = p.hardware_name;
  j["phase"] = PhaseName(p.workload.phase);
  j["nodes"] = p.nodes;
  j["devices"] = p.devices;
  j["ep"] = p.workload.ep;
  j["units"] = p.units;
  j["redundant_experts"] = p.workload.redundant_experts;
  j["batch_per_gpu"] = p.workload.batch_per_device;
  j["avg_context"] = decode ? nlohmann::ordered_json(p.workload.avg_context) : nlohmann::ordered_json();
  j["prompt_len"] = decode ? nlohmann::ordered_json() : nlohmann::ordered_json(p.workload.prompt_tokens());
  j["cache_hit_rate"] = p.workload.cache_hit_rate;
  j["mtp_acceptance"] = p.workload.mtp_acceptance >= 0 ? nlohmann::ordered_json(p.workload.mtp_acceptance)
                                                       : nlohmann::ordered_json();
  j["weight_dtype"] = PlanDTypeName(p.workload.weight_dtype);
  j["kv_dtype"] = PlanDTypeName(p.workload.kv_dtype);
  j["micro_batches"] = p.workload.micro_batches;
  j["kv_bytes_per_token"] = p.kv_bytes_per_token;
  j["kv_bytes_per_token_mha"] = p.kv_bytes_per_token_mha;
  j["kv_bytes_per_token_held"] = p.memory.kv_bytes_per_token;  // with an MTP module's layer
  j["kv_capacity_tokens_per_device"] = p.memory.kv_capacity_tokens;
  j["kv_capacity_sequences_per_device"] = p.memory.kv_capacity_sequences;
  j["memory_per_device_bytes"] = std::llround(p.memory.used());
  j["device_memory_bytes"] = std::llround(p.memory.total);
  auto or_null = [](bool applies, double v) { return applies ? nlohmann::ordered_json(v) : nlohmann::ordered_json(); };
  j["input_tokens_per_s_per_node"] = or_null(!decode, p.input_tokens_per_s_per_node());
  j["output_tokens_per_s_per_node"] = or_null(decode, p.output_tokens_per_s_per_node());
  j["input_tokens_per_s_per_device"] = or_null(!decode, p.input_tokens_per_s_per_device);
  j["output_tokens_per_s_per_device"] = or_null(decode, p.output_tokens_per_s_per_device);
  j["ttft_ms"] = p.ttft_s * 1e3;
  j["itl_ms"] = or_null(decode, p.itl_s * 1e3);
  j["step_ms"] = p.step_s * 1e3;
  j["compute_ms"] = p.compute_s * 1e3;
  j["communication_ms"] = p.communication_s * 1e3;
  j["overlapped_ms"] = p.hidden_s * 1e3;
  j["imbalance"] = p.routing.imbalance;
  j["imbalance_expected"] = p.routing.imbalance_expected;
  j["imbalance_no_redundant"] = p.routing.imbalance_no_redundant;
  j["placement"] = p.routing.hierarchical ? "hierarchical" : "flat";
  return j;
}

std::string CsvField(const nlohmann::ordered_json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string quoted = "\"";
    for (char c : s) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
    return quoted + "\"";
  }
  if (v.is_number_float()) return absl::StrFormat("%.6g", v.get<double>());
  return v.dump();
}

std::string Gib(double bytes) { return absl::StrFormat("%8.2f GiB", bytes / kGiB); }

}  // namespace

std::string SettingsText(const std::vector<Setting>& settings) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : settings) parts.push_back(absl::StrCat(k, "=", v));
  return absl::StrJoin(parts, " ");
}

std::optional<double> MetricValue(const Plan& plan, const std::string& metric) {
  const nlohmann::ordered_json j = FlatResults("", plan);
  if (!j.contains(metric) || !j[metric].is_number()) return std::nullopt;
  return j[metric].get<double>();
}

nlohmann::ordered_json PlanJson(const std::string& model_name, const Plan& p,
                                const std::optional<PublishedFigure>& published) {
  nlohmann::ordered_json j = FlatResults(model_name, p);
  nlohmann::ordered_json memory;
  memory["device"] = std::llround(p.memory.total);
  memory["reserved"] = std::llround(p.memory.reserved);
  memory["attention_and_dense"] = std::llround(p.memory.attention_and_dense);
  memory["shared_experts"] = std::llround(p.memory.shared_experts);
  memory["routed_experts_own"] = std::llround(p.memory.routed_experts_own);
  memory["routed_experts_redundant"] = std::llround(p.memory.routed_experts_redundant);
  memory["activations"] = std::llround(p.memory.activations);
  memory["communication_buffers"] = std::llround(p.memory.communication_buffers);
  memory["kv_cache_pool"] = std::llround(p.memory.kv_cache);
  memory["kv_cache_used"] = std::llround(p.memory.kv_needed);
  memory["headroom"] = std::llround(p.memory.kv_cache - p.memory.kv_needed);
  j["memory_bytes"] = memory;
  nlohmann::ordered_json time;
  for (const StepPart& part : p.compute) time[part.name] = part.seconds * 1e3;
  time["dispatch + combine"] = p.communication_s * 1e3;
  time["overlapped"] = -p.hidden_s * 1e3;
  j["time_ms"] = time;
  nlohmann::ordered_json comm;
  comm["dispatch_nic"] = p.dispatch_nic_bytes;
  comm["dispatch_intra_node"] = p.dispatch_intra_bytes;
  comm["combine_nic"] = p.combine_nic_bytes;
  comm["combine_intra_node"] = p.combine_intra_bytes;
  j["communication_bytes_per_step"] = comm;
  nlohmann::ordered_json layer;
  for (const StepPart& part : p.moe_layer) {
    layer[part.name] = {{"us", part.seconds * 1e6}, {"flops", part.flops}, {"bytes", part.bytes}};
  }
  layer["dispatch"] = {{"us", p.layer_dispatch_s * 1e6}, {"bytes", p.layer_dispatch_bytes}};
  layer["combine"] = {{"us", p.layer_combine_s * 1e6}, {"bytes", p.layer_combine_bytes}};
  j["moe_layer_per_micro_batch"] = layer;
  nlohmann::ordered_json routing;
  routing["expert_slots_per_device"] = p.routing.max_experts_per_device;
  routing["remote_node_pairs_per_token"] = p.routing.remote_node_pairs;
  routing["local_node_pairs_per_token"] = p.routing.local_node_pairs;
  routing["remote_nodes_per_token"] = p.routing.remote_nodes;
  routing["intra_node_copies_per_token"] = p.routing.intra_node_copies;
  j["routing"] = routing;
  j["flops_per_step"] = p.flops_per_step;
  if (published) {
    nlohmann::ordered_json pub;
    pub["metric"] = published->metric;
    pub["value"] = published->value;
    pub["source"] = published->source;
    if (auto v = MetricValue(p, published->metric)) pub["planned_over_published"] = *v / published->value;
    j["published"] = pub;
  }
  return j;
}

nlohmann::ordered_json ErrorJson(const std::vector<Setting>& settings, const absl::Status& status) {
  nlohmann::ordered_json j;
  for (const auto& [k, v] : settings) j[k] = v;
  j["error"] = std::string(status.message());
  return j;
}

std::string CsvHeader(const std::vector<Setting>& settings) {
  std::vector<std::string> columns;
  for (const auto& s : settings) columns.push_back(absl::StrCat("sweep:", s.first));
  const nlohmann::ordered_json flat = FlatResults("", Plan{});
  for (const auto& item : flat.items()) columns.push_back(item.key());
  columns.push_back("error");
  return absl::StrJoin(columns, ",") + "\n";
}

std::string CsvRow(const std::string& model_name, const PlanResult& r) {
  std::vector<std::string> fields;
  for (const auto& s : r.settings) fields.push_back(CsvField(s.second));
  const nlohmann::ordered_json flat = FlatResults(model_name, r.plan.ok() ? *r.plan : Plan{});
  for (const auto& item : flat.items()) fields.push_back(r.plan.ok() ? CsvField(item.value()) : "");
  fields.push_back(r.plan.ok() ? "" : CsvField(std::string(r.plan.status().message())));
  return absl::StrJoin(fields, ",") + "\n";
}

std::string PlanReport(const std::string& model_name, const Plan& p, const Efficiency& e,
                       const std::optional<PublishedFigure>& published) {
  const Workload& w = p.workload;
  const bool decode = w.phase == Phase::kDecode;
  const MemoryBreakdown& m = p.memory;
  std::string out;
  absl::StrAppendFormat(&out, "plan: %s on %s (%lld x %lld %s), %s\n", model_name, p.cluster_name, p.nodes,
                        p.devices_per_node, p.hardware_name, PhaseName(w.phase));
  absl::StrAppendFormat(&out, "  EP %lld (%lld unit(s)%s), %lld redundant experts, placement %s, %lld micro-batch(es)\n",
                        w.ep, p.units,
                        p.nodes_per_unit > 0 ? absl::StrFormat(" of %lld node(s)", p.nodes_per_unit) : " within a node",
                        w.redundant_experts, p.routing.hierarchical ? "hierarchical (whole groups per node)" : "flat",
                        w.micro_batches);
  if (decode) {
    absl::StrAppendFormat(&out, "  %lld sequences per device, average context %lld; weights %s, KV %s%s\n",
                          w.batch_per_device, w.avg_context, PlanDTypeName(w.weight_dtype), PlanDTypeName(w.kv_dtype),
                          w.mtp_acceptance >= 0 ? absl::StrFormat("; MTP, draft accepted %.0f%%", 100 * w.mtp_acceptance)
                                                : std::string());
  } else {
    absl::StrAppendFormat(&out, "  %lld prompts of %lld tokens per device (cache hits %.1f%%); weights %s, KV %s\n",
                          w.batch_per_device, w.prompt_tokens(), 100 * w.cache_hit_rate, PlanDTypeName(w.weight_dtype),
                          PlanDTypeName(w.kv_dtype));
  }
  absl::StrAppend(&out, "\nmemory per device\n");
  auto line = [&](const char* name, double bytes) {
    absl::StrAppendFormat(&out, "  %-34s %s  %5.1f%%\n", name, Gib(bytes), 100 * bytes / m.total);
  };
  line("attention and dense weights", m.attention_and_dense);
  line("shared experts", m.shared_experts);
  line("routed experts (own share)", m.routed_experts_own);
  line("routed experts (redundant)", m.routed_experts_redundant);
  line("activations", m.activations);
  line("communication buffers", m.communication_buffers);
  line("reserved for the runtime", m.reserved);
  line("KV cache in use", m.kv_needed);
  line("headroom (free KV cache)", m.kv_cache - m.kv_needed);
  line("device total", m.total);
  absl::StrAppendFormat(&out, "  KV cache: %lld B/token (MHA equivalent %lld, %.1f%% of it)", p.kv_bytes_per_token,
                        p.kv_bytes_per_token_mha, 100.0 * p.kv_bytes_per_token / p.kv_bytes_per_token_mha);
  if (m.kv_bytes_per_token != p.kv_bytes_per_token) {
    absl::StrAppendFormat(&out, ", %lld B/token with the MTP module's layer", m.kv_bytes_per_token);
  }
  absl::StrAppendFormat(&out, "; capacity %lld tokens = %lld sequences of %lld\n", m.kv_capacity_tokens,
                        m.kv_capacity_sequences, decode ? w.avg_context : w.prompt_tokens());

  absl::StrAppendFormat(&out, "\nstep time on the slowest device (%lld tokens per micro-batch)\n", p.tokens_per_micro_batch);
  absl::StrAppendFormat(&out, "  %-24s %10s %12s %12s %8s\n", "operation", "ms", "TFLOP", "GB read", "mem-bound");
  for (const StepPart& part : p.compute) {
    absl::StrAppendFormat(&out, "  %-24s %10.3f %12.3f %12.3f %7.0f%%\n", part.name, part.seconds * 1e3,
                          part.flops / 1e12, part.bytes / 1e9,
                          part.seconds > 0 ? 100 * part.memory_bound / part.seconds : 0.0);
  }
  absl::StrAppendFormat(&out, "  %-24s %10.3f\n", "computation", p.compute_s * 1e3);
  absl::StrAppendFormat(&out, "  %-24s %10.3f   (%s kernels)\n", "dispatch + combine", p.communication_s * 1e3,
                        decode ? "low-latency" : "normal");
  absl::StrAppendFormat(&out, "  %-24s %10.3f\n", "hidden by overlap", -p.hidden_s * 1e3);
  absl::StrAppendFormat(&out, "  %-24s %10.3f\n", "step", p.step_s * 1e3);
  absl::StrAppendFormat(&out, "  per step and device: dispatch %.3f GB over the NIC + %.3f GB over the link, combine %.3f + %.3f GB\n",
                        p.dispatch_nic_bytes / 1e9, p.dispatch_intra_bytes / 1e9, p.combine_nic_bytes / 1e9,
                        p.combine_intra_bytes / 1e9);
  absl::StrAppend(&out, "  one MoE layer, one micro-batch:\n");
  for (const StepPart& part : p.moe_layer) {
    absl::StrAppendFormat(&out, "    %-22s %9.1f us %10.2f GFLOP %9.1f MB\n", part.name, part.seconds * 1e6,
                          part.flops / 1e9, part.bytes / 1e6);
  }
  absl::StrAppendFormat(&out, "    %-22s %9.1f us %27.1f MB sent\n", "dispatch", p.layer_dispatch_s * 1e6,
                        p.layer_dispatch_bytes / 1e6);
  absl::StrAppendFormat(&out, "    %-22s %9.1f us %27.1f MB sent\n", "combine", p.layer_combine_s * 1e6,
                        p.layer_combine_bytes / 1e6);
  absl::StrAppendFormat(&out, "  per token: %.2f expert pairs on other nodes, %.2f on other devices of its node; reaches %.2f other nodes\n",
                        p.routing.remote_node_pairs, p.routing.local_node_pairs, p.routing.remote_nodes);

  absl::StrAppendFormat(&out, "\nload imbalance (busiest device / mean, routed experts): %.3f with %lld redundant, %.3f without\n",
                        p.routing.imbalance, w.redundant_experts, p.routing.imbalance_no_redundant);
  absl::StrAppendFormat(&out, "  expected from the histogram alone: %.3f with, %.3f without; the rest is the randomness of each micro-batch's routing\n",
                        p.routing.imbalance_expected, p.routing.imbalance_expected_no_redundant);

  absl::StrAppend(&out, "\nresults\n");
  if (decode) {
    absl::StrAppendFormat(&out, "  output tokens/s: %.0f per device, %.0f per node, %.0f for the %lld node(s)\n",
                          p.output_tokens_per_s_per_device, p.output_tokens_per_s_per_node(),
                          p.output_tokens_per_s_per_device * p.devices, p.nodes);
    absl::StrAppendFormat(&out, "  inter-token latency %.1f ms (%.1f tokens/s per sequence); time to first token %.0f ms\n",
                          p.itl_s * 1e3, 1.0 / p.itl_s, p.ttft_s * 1e3);
  } else {
    absl::StrAppendFormat(&out, "  input tokens/s: %.0f per device, %.0f per node, %.0f for the %lld node(s)\n",
                          p.input_tokens_per_s_per_device, p.input_tokens_per_s_per_node(),
                          p.input_tokens_per_s_per_device * p.devices, p.nodes);
    absl::StrAppendFormat(&out, "  time to first token %.0f ms (the step that holds the prompt)\n", p.ttft_s * 1e3);
  }
  absl::StrAppendFormat(&out, "  achieved %.0f TFLOP/s per device\n", p.flops_per_step / p.step_s / 1e12);
  if (published) {
    if (auto v = MetricValue(p, published->metric)) {
      absl::StrAppendFormat(&out, "  published %s: %.0f (%s); planned %.0f, %+.1f%%\n", published->metric,
                            published->value, published->source, *v, 100 * (*v / published->value - 1));
    }
  }
  absl::StrAppendFormat(&out,
                        "\nefficiency factors: gemm %.2f, attention %.2f, memory bandwidth %.2f, intra-node link %.2f, "
                        "NIC %.2f (normal) / %.2f (low-latency), all-to-all overhead %.0f us, overlap %.2f, "
                        "layer overhead %.0f us, reserved memory %.0f%%\n",
                        e.gemm, e.attention, e.memory_bandwidth, e.intra_node_link, e.nic_normal, e.nic_low_latency,
                        e.all_to_all_overhead_s * 1e6, e.overlap, e.layer_overhead_s * 1e6,
                        100 * e.reserved_memory_fraction);
  return out;
}

std::string SweepTable(const std::vector<PlanResult>& results) {
  std::string out;
  absl::StrAppendFormat(&out, "%-36s %9s %9s %12s %10s %12s %10s %10s %9s\n", "settings", "mem GiB", "KV GiB",
                        "KV tokens", "seqs", "tok/s/node", "TTFT ms", "ITL ms", "imbalance");
  for (const PlanResult& r : results) {
    const std::string settings = r.settings.empty() ? "(preset)" : SettingsText(r.settings);
    if (!r.plan.ok()) {
      absl::StrAppendFormat(&out, "%-36s %s\n", settings, r.plan.status().message());
      continue;
    }
    const Plan& p = *r.plan;
    const bool decode = p.workload.phase == Phase::kDecode;
    absl::StrAppendFormat(&out, "%-36s %9.1f %9.1f %12lld %10lld %12.0f %10.1f %10s %9.3f\n", settings,
                          p.memory.used() / kGiB, p.memory.kv_needed / kGiB, p.memory.kv_capacity_tokens,
                          p.memory.kv_capacity_sequences,
                          decode ? p.output_tokens_per_s_per_node() : p.input_tokens_per_s_per_node(), p.ttft_s * 1e3,
                          decode ? absl::StrFormat("%.1f", p.itl_s * 1e3) : std::string("-"), p.routing.imbalance);
  }
  return out;
}

}  // namespace daedalus
