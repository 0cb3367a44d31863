#include "planner/serving.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "planner/closed_loop.h"

namespace daedalus {

double ShareAt(const std::map<int64_t, double>& shares, int64_t batch) {
  auto hi = shares.lower_bound(batch);
  if (hi == shares.begin()) return hi->second;
  if (hi == shares.end()) return std::prev(hi)->second;
  if (hi->first == batch) return hi->second;
  const auto lo = std::prev(hi);
  const double t = std::log(static_cast<double>(batch) / lo->first) / std::log(static_cast<double>(hi->first) / lo->first);
  return lo->second + t * (hi->second - lo->second);
}

absl::StatusOr<Efficiency> CalibratedEfficiency(const HardwareSpec& hw, int64_t batch) {
  if (hw.prefill_flops_achieved <= 0 || hw.decode_share_of_roofline.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("hardware \"", hw.name,
                                                   "\" has no measured efficiencies (prefill_gflops, "
                                                   "decode_share_of_roofline): write it with `daedalus plan --calibrate`"));
  }
  Efficiency e;
  // What a roofline misses on a CPU is in the measured figures: no per-layer kernel overhead,
  // the measured all-to-all (bandwidth and fixed cost as bench-a2a saw them), no overlap.
  e.layer_overhead_s = 0;
  e.all_to_all_overhead_s = hw.intra_node_latency_s;
  e.intra_node_link = e.nic_low_latency = e.nic_normal = 1.0;
  e.overlap = 0;
  if (batch <= 0) {  // prefill: GEMMs at the measured rate, attention at the same share of its unit
    e.gemm = e.attention = std::min(1.0, hw.prefill_flops_achieved / hw.bf16_flops);
    e.memory_bandwidth = hw.decode_share_of_roofline.begin()->second;
    return e;
  }
  // Decode: the share of the roofline measured at the nearest batches, interpolated in log batch.
  const double share = ShareAt(hw.decode_share_of_roofline, batch);
  e.gemm = e.attention = e.memory_bandwidth = share;  // the roofline divided by the share
  return e;
}

absl::StatusOr<ServingPrediction> PredictServing(const ModelConfig& config, const ClusterConfig& given,
                                                 const Workload& base, const ServingLoad& load) {
  // A node's devices step together and share its memory: where the hardware file has the
  // node's figures (every core busy), each device's memory-bound work gets its part of the
  // node's bandwidth at the share measured that way; its compute keeps the device's own figures.
  ClusterConfig cluster = given;
  HardwareSpec& hw = cluster.hardware;
  const bool shared = hw.node_memory_bandwidth > 0 && cluster.devices_per_node > 1;
  const auto& memory_shares =
      shared && !hw.node_decode_share_of_roofline.empty() ? hw.node_decode_share_of_roofline : hw.decode_share_of_roofline;
  if (shared) hw.memory_bandwidth = std::min(hw.memory_bandwidth, hw.node_memory_bandwidth / cluster.devices_per_node);
  if (load.concurrency < 1 || load.prompt_len < 1 || load.max_new_tokens < 1 || load.max_batch_tokens < 1 ||
      load.prefill_chunk < 1) {
    return absl::InvalidArgumentError(
        "serving: concurrency, prompt length, new tokens, max batch tokens and prefill chunk must be >= 1");
  }
  ServingPrediction p;
  p.load = load;
  p.workers = (base.nodes > 0 ? base.nodes : cluster.nodes) * cluster.devices_per_node;
  p.busy_workers = std::min(p.workers, load.concurrency);
  p.batch_per_worker = (load.concurrency + p.workers - 1) / p.workers;
  Workload decode = base;
  decode.phase = Phase::kDecode;
  decode.micro_batches = 1;
  decode.ep = p.workers;
  decode.batch_per_device = p.batch_per_worker;
  decode.avg_context = load.prompt_len + load.max_new_tokens / 2;
  decode.mtp_acceptance = -1;
  decode.busy_devices = p.busy_workers;
  ASSIGN_OR_RETURN(Efficiency de, CalibratedEfficiency(cluster.hardware, p.batch_per_worker));
  if (shared) de.memory_bandwidth = ShareAt(memory_shares, p.batch_per_worker);
  ASSIGN_OR_RETURN(Plan d, MakePlan(config, cluster, decode, de, {}));
  Workload prefill = decode;
  prefill.phase = Phase::kPrefill;
  prefill.batch_per_device = 1;
  prefill.prompt_len = load.prompt_len;
  ASSIGN_OR_RETURN(Efficiency pe, CalibratedEfficiency(cluster.hardware, 0));
  if (shared) pe.memory_bandwidth = memory_shares.begin()->second;
  ASSIGN_OR_RETURN(Plan f, MakePlan(config, cluster, prefill, pe, {}));
  p.decode_step_s = d.step_s;
  p.prefill_s = f.step_s;
  const double b = static_cast<double>(load.concurrency) / p.busy_workers;
  const double cycle = (load.max_new_tokens - 1) * p.decode_step_s + b * p.prefill_s;
  p.output_tokens_per_s = p.busy_workers * b * load.max_new_tokens / cycle;
  p.itl_s = p.decode_step_s;
  ClosedLoopLoad loop{load.concurrency, p.busy_workers, load.prompt_len, load.max_new_tokens, load.max_batch_tokens,
                      load.prefill_chunk};
  const ClosedLoopCosts costs{p.decode_step_s, p.prefill_s / static_cast<double>(load.prompt_len)};
  p.ttft_s = SimulateClosedLoop(loop, costs, std::max<int64_t>(200, 20 * load.concurrency)).ttft_p50_s;
  return p;
}

}  // namespace daedalus
