#include "planner/disaggregated.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "planner/report.h"

namespace daedalus {
namespace {

absl::Status Invalid(const std::string& what) { return absl::InvalidArgumentError(absl::StrCat("phase pd: ", what)); }

// One side's deployment: its nodes, all their devices one EP group.
Workload Side(const Workload& w, Phase phase, int64_t nodes) {
  Workload side = w;
  side.phase = phase;
  side.nodes = nodes;
  side.ep = 0;
  side.busy_devices = 0;
  if (phase == Phase::kPrefill) {
    side.batch_per_device = w.prefill_batch_per_device;
    side.prompt_len = w.prompt_tokens();
    side.mtp_acceptance = -1;
  } else {
    side.cache_hit_rate = 0;
  }
  return side;
}

}  // namespace

absl::StatusOr<PdPlan> MakePdPlan(const ModelConfig& config, const ClusterConfig& cluster, const Workload& w,
                                  const Efficiency& efficiency, const ExpertLoad& histogram) {
  if (w.prefill_nodes < 1 || w.decode_nodes < 1) {
    return Invalid("needs --prefill-nodes and --decode-nodes (or prefill_nodes and decode_nodes in the cluster file)");
  }
  if (w.prefill_nodes + w.decode_nodes > cluster.nodes) {
    return Invalid(absl::StrCat(w.prefill_nodes, " prefill + ", w.decode_nodes, " decode nodes: the cluster ", cluster.name,
                                " has ", cluster.nodes));
  }
  if (w.output_len < 1) return Invalid("needs --output-len (tokens generated per request)");
  if (!(cluster.hardware.nic_bandwidth > 0)) {
    return Invalid(absl::StrCat("the hardware ", cluster.hardware.name, " gives no nic_bandwidth_gb_s, which carries the KV pages"));
  }
  PdPlan pd;
  pd.workload = w;
  auto prefill = MakePlan(config, cluster, Side(w, Phase::kPrefill, w.prefill_nodes), efficiency, histogram);
  if (!prefill.ok()) return absl::Status(prefill.status().code(), absl::StrCat("prefill side: ", prefill.status().message()));
  auto decode = MakePlan(config, cluster, Side(w, Phase::kDecode, w.decode_nodes), efficiency, histogram);
  if (!decode.ok()) return absl::Status(decode.status().code(), absl::StrCat("decode side: ", decode.status().message()));
  pd.prefill = *std::move(prefill);
  pd.decode = *std::move(decode);

  const double prompt = static_cast<double>(w.prompt_tokens()), output = static_cast<double>(w.output_len);
  const double prefill_devices = static_cast<double>(pd.prefill.devices);
  pd.prefill_requests_per_s = pd.prefill.input_tokens_per_s_per_device * prefill_devices / prompt;
  pd.decode_requests_per_s = pd.decode.output_tokens_per_s_per_device * static_cast<double>(pd.decode.devices) / output;
  // Every prompt token's latent moves, cached ones too: the decode side holds none of them.
  pd.kv_bytes_per_request = prompt * static_cast<double>(pd.prefill.kv_bytes_per_token);
  const double nic = cluster.hardware.nic_bandwidth;
  pd.kv_transfer_s = pd.kv_bytes_per_request / nic + cluster.hardware.nic_latency_s;
  // A prefill device's NIC seconds per request: its all-to-all (per step, at the side's full
  // rate) and its share of the KV pages.
  const double a2a_bytes_per_s = (pd.prefill.dispatch_nic_bytes + pd.prefill.combine_nic_bytes) / pd.prefill.step_s;
  const double a2a_per_request = a2a_bytes_per_s * prefill_devices / pd.prefill_requests_per_s;  // bytes, whole side
  pd.nic_requests_per_s = nic * prefill_devices / (a2a_per_request + pd.kv_bytes_per_request);

  pd.requests_per_s = std::min({pd.prefill_requests_per_s, pd.decode_requests_per_s, pd.nic_requests_per_s});
  pd.bottleneck = pd.requests_per_s == pd.prefill_requests_per_s ? "prefill"
                  : pd.requests_per_s == pd.decode_requests_per_s ? "decode"
                                                                  : "kv transfer";
  pd.prefill_nic_all_to_all = pd.requests_per_s * a2a_per_request / (prefill_devices * nic);
  pd.prefill_nic_kv = pd.requests_per_s * pd.kv_bytes_per_request / (prefill_devices * nic);
  // At each side's per-node rate: the nodes that would serve what the other side can.
  const double prefill_side = std::min(pd.prefill_requests_per_s, pd.nic_requests_per_s);
  pd.balanced_decode_nodes = static_cast<double>(w.decode_nodes) * prefill_side / pd.decode_requests_per_s;
  pd.balanced_prefill_nodes = static_cast<double>(w.prefill_nodes) * pd.decode_requests_per_s / prefill_side;
  return pd;
}

nlohmann::ordered_json PdPlanJson(const std::string& model_name, const PdPlan& p) {
  nlohmann::ordered_json j;
  j["model"] = model_name;
  j["cluster"] = p.prefill.cluster_name;
  j["phase"] = "pd";
  j["prefill_nodes"] = p.workload.prefill_nodes;
  j["decode_nodes"] = p.workload.decode_nodes;
  j["prompt_len"] = p.workload.prompt_tokens();
  j["output_len"] = p.workload.output_len;
  j["requests_per_s"] = p.requests_per_s;
  j["bottleneck"] = p.bottleneck;
  j["prefill_requests_per_s"] = p.prefill_requests_per_s;
  j["decode_requests_per_s"] = p.decode_requests_per_s;
  j["kv_transfer_requests_per_s"] = p.nic_requests_per_s;
  j["input_tokens_per_s"] = p.input_tokens_per_s();
  j["output_tokens_per_s"] = p.output_tokens_per_s();
  j["kv_bytes_per_request"] = p.kv_bytes_per_request;
  j["kv_transfer_ms"] = p.kv_transfer_s * 1e3;
  j["prefill_nic_share_all_to_all"] = p.prefill_nic_all_to_all;
  j["prefill_nic_share_kv"] = p.prefill_nic_kv;
  j["prefill_busy"] = p.prefill_busy();
  j["decode_busy"] = p.decode_busy();
  j["balanced_prefill_nodes"] = p.balanced_prefill_nodes;
  j["balanced_decode_nodes"] = p.balanced_decode_nodes;
  j["ttft_ms"] = p.ttft_s() * 1e3;
  j["itl_ms"] = p.itl_s() * 1e3;
  j["prefill"] = PlanJson(model_name, p.prefill, std::nullopt);
  j["decode"] = PlanJson(model_name, p.decode, std::nullopt);
  return j;
}

std::string PdPlanReport(const std::string& model_name, const PdPlan& p) {
  const Workload& w = p.workload;
  std::string out = absl::StrFormat(
      "%s on %s (%s): disaggregated prefill and decode, %lld-token prompts, %lld tokens generated per request\n",
      model_name, p.prefill.cluster_name, p.prefill.hardware_name, static_cast<long long>(w.prompt_tokens()),
      static_cast<long long>(w.output_len));
  absl::StrAppendFormat(&out,
                        "  prefill side: %lld nodes (EP%lld, %lld prompts per device per step): %.0f input tokens/s per "
                        "node, %.2f requests/s; TTFT %.1f ms\n",
                        static_cast<long long>(w.prefill_nodes), static_cast<long long>(p.prefill.devices),
                        static_cast<long long>(w.prefill_batch_per_device), p.prefill.input_tokens_per_s_per_node(),
                        p.prefill_requests_per_s, p.ttft_s() * 1e3);
  absl::StrAppendFormat(&out,
                        "  decode side:  %lld nodes (EP%lld, %lld sequences per device, context %lld): %.0f output "
                        "tokens/s per node, %.2f requests/s; ITL %.1f ms\n",
                        static_cast<long long>(w.decode_nodes), static_cast<long long>(p.decode.devices),
                        static_cast<long long>(w.batch_per_device), static_cast<long long>(w.avg_context),
                        p.decode.output_tokens_per_s_per_node(), p.decode_requests_per_s, p.itl_s() * 1e3);
  absl::StrAppendFormat(&out,
                        "  KV pages:     %.1f MiB per request (%lld B per token), %.2f ms over one prefill device's NIC; "
                        "the prefill NICs carry %.2f requests/s (all-to-all %.0f%%, KV %.0f%% of their time at the rate "
                        "below)\n",
                        p.kv_bytes_per_request / (1 << 20), static_cast<long long>(p.prefill.kv_bytes_per_token),
                        p.kv_transfer_s * 1e3, p.nic_requests_per_s, 100 * p.prefill_nic_all_to_all,
                        100 * p.prefill_nic_kv);
  absl::StrAppendFormat(&out,
                        "  serves %.2f requests/s (%.0f input and %.0f output tokens/s), %s-bound: prefill %.0f%% busy, "
                        "decode %.0f%% busy\n",
                        p.requests_per_s, p.input_tokens_per_s(), p.output_tokens_per_s(), p.bottleneck, 100 * p.prefill_busy(),
                        100 * p.decode_busy());
  absl::StrAppendFormat(&out, "  balanced at this per-node rate: %.2f decode nodes for these %lld prefill nodes, or %.2f "
                              "prefill nodes for these %lld decode nodes\n",
                        p.balanced_decode_nodes, static_cast<long long>(w.prefill_nodes), p.balanced_prefill_nodes,
                        static_cast<long long>(w.decode_nodes));
  return out;
}

std::string PdSweepTable(const std::vector<std::pair<std::vector<Setting>, absl::StatusOr<PdPlan>>>& results) {
  std::string out = absl::StrFormat("%-40s %10s %-11s %12s %12s %9s %9s %9s\n", "settings", "req/s", "bound", "input tok/s",
                                    "output tok/s", "TTFT ms", "ITL ms", "KV ms");
  for (const auto& [settings, plan] : results) {
    const std::string text = settings.empty() ? "(preset)" : SettingsText(settings);
    if (!plan.ok()) {
      absl::StrAppendFormat(&out, "%-40s %s\n", text, plan.status().message());
      continue;
    }
    absl::StrAppendFormat(&out, "%-40s %10.2f %-11s %12.0f %12.0f %9.1f %9.1f %9.2f\n", text, plan->requests_per_s,
                          plan->bottleneck, plan->input_tokens_per_s(), plan->output_tokens_per_s(), plan->ttft_s() * 1e3,
                          plan->itl_s() * 1e3, plan->kv_transfer_s * 1e3);
  }
  return out;
}

}  // namespace daedalus
