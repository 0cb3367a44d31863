// Dispatch and combine of routed tokens between the devices of an expert-parallel unit: bytes
// over the intra-node link and the NIC, and the time of one call.
//
// Two kinds of all-to-all, as DeepEP has them:
// - low latency (decode): every (token, expert) pair is its own message, straight to the
//   device holding the expert, over the NIC when that device is on another node;
// - normal (prefill): a token crosses the NIC once per node it needs (node-limited routing
//   keeps that to a few nodes), then the receiving device forwards it over the link to the
//   other devices of that node that need it; combine reverses the path.
// Dispatch rows are FP8 with one float32 scale per 128 values when the weights are FP8 (as
// DeepSeek serves), BF16 otherwise; combine rows are BF16.
#pragma once

#include "core/cluster_config.h"
#include "core/dtype.h"
#include "core/model_config.h"
#include "planner/efficiency.h"
#include "planner/load_balance.h"

namespace daedalus {

enum class AllToAllKind { kLowLatency, kNormal };

double DispatchRowBytes(const ModelConfig& config, DType weight_dtype);
double CombineRowBytes(const ModelConfig& config);

// Bytes one device sends in one call (the mean device; the busiest receives `imbalance` times
// the mean).
struct AllToAllVolume {
  double nic_bytes = 0;
  double intra_node_bytes = 0;
};
AllToAllVolume AllToAllBytes(AllToAllKind kind, const RoutingStats& routing, double tokens, double row_bytes);

// One call: the NIC latency when the unit spans nodes, the fixed kernel cost, then the slower
// of the two links carrying the busiest device's share.
double AllToAllSeconds(AllToAllKind kind, const AllToAllVolume& volume, double imbalance, bool spans_nodes,
                       const HardwareSpec& hardware, const Efficiency& efficiency);

}  // namespace daedalus
