// Hardware and cluster descriptions (YAML under cluster-configs/), parsed and validated once.
//
// Hardware file (cluster-configs/hardware/NAME.yaml), every number per device, decimal units:
//   name: H800 SXM5            kind: gpu | cpu
//   memory_gib: 80 (or memory_gb, decimal)   memory_bandwidth_gb_s: 3350
//   bf16_tflops: 989           fp8_tflops: 1979      (dense; fp8 optional: absent means no FP8
//                                                     units, FP8 weights are widened to bf16)
//   intra_node_gb_s: 200       (one direction)       nic_gb_s: 50     nic_latency_us: 2
// Measured figures, as `daedalus plan --calibrate` writes them from `bench` and `bench-a2a`
// (all optional):
//   kernel_tier: avx512bf16    threads: 2            fp32_tflops: 0.2 (the tier's float FMA peak)
//   prefill_gflops: 150        (the engine's prefill projections, achieved)
//   decode_share_of_roofline: {1: 0.62, 8: 0.41}     (achieved decode tokens/s over the roofline, by batch)
//   intra_node_latency_us: 12  (the expert all-to-all's fixed cost within a node)
//   node_threads: 8            node_memory_bandwidth_gb_s: 60   node_decode_share_of_roofline: {1: 0.7}
//                              (the same, measured with every core of the node busy: CPU devices of
//                               one node share its memory bandwidth)
//
// Cluster file (cluster-configs/clusters/NAME.yaml):
//   name: ...  nodes: 18  devices_per_node: 8
//   hardware: h800             (a preset name, resolved as ../hardware/h800.yaml next to this
//                               file's folder, a path to a .yaml, or an inline mapping)
//   deployment: {...}          optional defaults for `daedalus plan` (see DeploymentDefaults)
//   published: {metric, value, source}   optional figure the deployment reproduces
//
// Unknown keys are errors, so a typo never silently falls back to a default.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace daedalus {

struct HardwareSpec {
  std::string name;
  std::string kind = "gpu";            // gpu | cpu
  double memory_bytes = 0;             // per device
  double memory_bandwidth = 0;         // bytes/s
  double bf16_flops = 0;               // dense FLOP/s
  double fp8_flops = 0;                // dense FLOP/s; equals bf16_flops when the device has no FP8 units
  double intra_node_bandwidth = 0;     // bytes/s per device, one direction (NVLink, or UPI / shared memory)
  double nic_bandwidth = 0;            // bytes/s per device, one direction
  double nic_latency_s = 0;            // one message across the network
  // Measured (plan --calibrate); zero or empty when the file does not give them.
  std::string kernel_tier;             // the CPU kernel tier the figures were measured with
  int64_t threads = 0;
  double fp32_flops = 0;               // float FMA peak, FLOP/s
  double prefill_flops_achieved = 0;   // the engine's prefill projections, FLOP/s
  std::map<int64_t, double> decode_share_of_roofline;  // by decode batch
  double intra_node_latency_s = 0;
  // With every core of the node busy (node_threads of them): the memory bandwidth all of them
  // together reach, and the decode share of that roofline.
  int64_t node_threads = 0;
  double node_memory_bandwidth = 0;
  std::map<int64_t, double> node_decode_share_of_roofline;
};

// Plan settings a cluster preset may carry (a published deployment's own settings); each is
// unset unless the file gives it. Field names follow `daedalus plan`'s flags.
struct DeploymentDefaults {
  std::optional<std::string> phase;  // prefill | decode | pd
  std::optional<int64_t> nodes;      // use this many of the cluster's nodes
  std::optional<int64_t> ep;
  std::optional<int64_t> redundant_experts;
  std::optional<int64_t> batch_per_gpu;
  std::optional<int64_t> avg_context;
  std::optional<int64_t> prompt_len;
  std::optional<int64_t> micro_batches;
  std::optional<std::string> weight_dtype;  // bf16 | fp8
  std::optional<std::string> kv_dtype;      // bf16 | fp8
  std::optional<double> cache_hit_rate;
  std::optional<double> synthetic_skew;
  std::optional<int64_t> prefill_nodes;  // pd: nodes of each side
  std::optional<int64_t> decode_nodes;
  std::optional<int64_t> output_len;     // pd: tokens generated per request
  std::optional<int64_t> prefill_batch_per_gpu;
};

// A published figure the preset's deployment is expected to reproduce.
struct PublishedFigure {
  std::string metric;  // a key of `daedalus plan --format json`, e.g. output_tokens_per_s_per_node
  double value = 0;
  std::string source;
};

struct ClusterConfig {
  std::string name;
  std::string source;  // the file it came from
  int64_t nodes = 0;
  int64_t devices_per_node = 0;
  HardwareSpec hardware;
  DeploymentDefaults deployment;
  std::optional<PublishedFigure> published;

  int64_t devices() const { return nodes * devices_per_node; }
};

// Errors name the file and the key.
absl::StatusOr<HardwareSpec> LoadHardwareSpec(const std::string& path);
absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path);
// The same from YAML text; `path` names it in errors, and a hardware preset named by a cluster
// is looked up relative to it as above.
absl::StatusOr<HardwareSpec> ParseHardwareSpec(std::string_view yaml, const std::string& path);
absl::StatusOr<ClusterConfig> ParseClusterConfig(std::string_view yaml, const std::string& path);

}  // namespace daedalus
