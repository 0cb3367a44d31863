#include "planner/serving.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace daedalus {

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
  const auto& shares = hw.decode_share_of_roofline;
  auto hi = shares.lower_bound(batch);
  double share;
  if (hi == shares.begin()) {
    share = hi->second;
  } else if (hi == shares.end()) {
    share = std::prev(hi)->second;
  } else if (hi->first == batch) {
    share = hi->second;
  } else {
    const auto lo = std::prev(hi);
    const double t = std::log(static_cast<double>(batch) / lo->first) / std::log(static_cast<double>(hi->first) / lo->first);
    share = lo->second + t * (hi->second - lo->second);
  }
  e.gemm = e.attention = e.memory_bandwidth = share;  // the roofline divided by the share
  return e;
}

absl::StatusOr<ServingPrediction> PredictServing(const ModelConfig& config, const ClusterConfig& cluster,
                                                 const Workload& base, const ServingLoad& load) {
  if (load.concurrency < 1 || load.prompt_len < 1 || load.max_new_tokens < 1) {
    return absl::InvalidArgumentError("serving: concurrency, prompt length and new tokens must be >= 1");
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
  ASSIGN_OR_RETURN(Plan d, MakePlan(config, cluster, decode, de, {}));
  Workload prefill = decode;
  prefill.phase = Phase::kPrefill;
  prefill.batch_per_device = 1;
  prefill.prompt_len = load.prompt_len;
  ASSIGN_OR_RETURN(Efficiency pe, CalibratedEfficiency(cluster.hardware, 0));
  ASSIGN_OR_RETURN(Plan f, MakePlan(config, cluster, prefill, pe, {}));
  p.decode_step_s = d.step_s;
  p.prefill_s = f.step_s;
  const double b = static_cast<double>(load.concurrency) / p.busy_workers;
  const double cycle = (load.max_new_tokens - 1) * p.decode_step_s + b * p.prefill_s;
  p.output_tokens_per_s = p.busy_workers * b * load.max_new_tokens / cycle;
  p.itl_s = p.decode_step_s;
  p.ttft_s = p.prefill_s + p.decode_step_s / 2;
  return p;
}

}  // namespace daedalus
