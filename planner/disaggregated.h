// Disaggregated prefill and decode (`plan --phase pd`), as DeepSeek, SGLang, vLLM and Dynamo
// run DeepSeek-V3: the cluster's first prefill_nodes nodes form one expert-parallel group that
// computes prompts, the next decode_nodes another that generates. Each side is planned as a
// deployment of its own (MakePlan over its nodes, all their devices one EP group). A request's
// latent KV pages (prompt_len · kv_bytes_per_token) leave its prefill device over that device's
// NIC while the next prompts are computed. The pair serves
//   requests/s = min(prefill side: input tokens/s ÷ prompt_len,
//                    decode side: output tokens/s ÷ output_len,
//                    prefill NICs: their bandwidth ÷ (all-to-all + KV bytes) per request)
// The side with capacity to spare is reported with the node count that would match the other
// at its per-node rate. TTFT is the prefill step (the first token streams from the prefill
// side); the pages reach the decode side kv_transfer_s later; ITL is the decode step.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "planner/plan.h"
#include "planner/sweep.h"

namespace daedalus {

struct PdPlan {
  Workload workload;
  Plan prefill, decode;
  // Requests per second each part could serve alone, and the pair.
  double prefill_requests_per_s = 0, decode_requests_per_s = 0, nic_requests_per_s = 0;
  double requests_per_s = 0;
  std::string bottleneck;  // "prefill" | "decode" | "kv transfer"
  double kv_bytes_per_request = 0;
  double kv_transfer_s = 0;  // one request's pages over one prefill device's NIC
  // A prefill device's NIC at requests_per_s: all-to-all and KV pages, shares of its bandwidth.
  double prefill_nic_all_to_all = 0, prefill_nic_kv = 0;
  double balanced_prefill_nodes = 0, balanced_decode_nodes = 0;

  // The deployment at requests_per_s.
  double input_tokens_per_s() const { return requests_per_s * static_cast<double>(workload.prompt_tokens()); }
  double output_tokens_per_s() const { return requests_per_s * static_cast<double>(workload.output_len); }
  // requests_per_s over each side's own capacity.
  double prefill_busy() const { return requests_per_s / prefill_requests_per_s; }
  double decode_busy() const { return requests_per_s / decode_requests_per_s; }
  double ttft_s() const { return prefill.ttft_s; }
  double itl_s() const { return decode.itl_s; }
};

// Errors: a workload without prefill_nodes, decode_nodes or output_len, sides that need more
// nodes than the cluster has, hardware without a NIC figure; and MakePlan's, naming the side.
absl::StatusOr<PdPlan> MakePdPlan(const ModelConfig& config, const ClusterConfig& cluster, const Workload& workload,
                                  const Efficiency& efficiency, const ExpertLoad& histogram);

// Flat keys (requests_per_s, bottleneck, input/output_tokens_per_s, kv_bytes_per_request,
// kv_transfer_ms, ttft_ms, itl_ms, ...) and each side's PlanJson under "prefill" and "decode".
nlohmann::ordered_json PdPlanJson(const std::string& model_name, const PdPlan& plan);
std::string PdPlanReport(const std::string& model_name, const PdPlan& plan);
// One line per sweep point: settings, requests/s, bottleneck, tokens/s, TTFT, ITL, or the error.
std::string PdSweepTable(const std::vector<std::pair<std::vector<Setting>, absl::StatusOr<PdPlan>>>& results);

}  // namespace daedalus
