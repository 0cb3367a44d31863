#include "planner/communication.h"

#include <algorithm>

namespace daedalus {

double DispatchRowBytes(const ModelConfig& config, DType weight_dtype) {
  const double h = static_cast<double>(config.hidden_size);
  return weight_dtype == DType::kF8E4M3 ? h + (h / 128.0) * 4.0 : h * 2.0;
}

double CombineRowBytes(const ModelConfig& config) { return static_cast<double>(config.hidden_size) * 2.0; }

AllToAllVolume AllToAllBytes(AllToAllKind kind, const RoutingStats& routing, double tokens, double row_bytes) {
  AllToAllVolume v;
  if (kind == AllToAllKind::kLowLatency) {
    v.nic_bytes = tokens * routing.remote_node_pairs * row_bytes;
    v.intra_node_bytes = tokens * routing.local_node_pairs * row_bytes;
  } else {
    v.nic_bytes = tokens * routing.remote_nodes * row_bytes;
    v.intra_node_bytes = tokens * routing.intra_node_copies * row_bytes;
  }
  return v;
}

double AllToAllSeconds(AllToAllKind kind, const AllToAllVolume& volume, double imbalance, bool spans_nodes,
                       const HardwareSpec& hw, const Efficiency& e) {
  if (volume.nic_bytes == 0 && volume.intra_node_bytes == 0) return 0;
  const double nic_efficiency = kind == AllToAllKind::kLowLatency ? e.nic_low_latency : e.nic_normal;
  const double nic_s = volume.nic_bytes / (hw.nic_bandwidth * nic_efficiency);
  const double link_s = volume.intra_node_bytes / (hw.intra_node_bandwidth * e.intra_node_link);
  return (spans_nodes ? hw.nic_latency_s : 0.0) + e.all_to_all_overhead_s + imbalance * std::max(nic_s, link_s);
}

}  // namespace daedalus
