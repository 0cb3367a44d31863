// Load imbalance and all-to-all fan-out of expert parallelism, by running the engine's own
// placement code (routing/placement, routing/expert_load) on an expert-load histogram and
// drawing routings from it.
//
// The histogram gives each expert's expected share of a layer's (token, slot) pairs. The
// placement is computed from it (EPLB-style: redundant replicas for the hottest experts, whole
// routing groups per node when the group count allows), then each micro-batch's routing is
// drawn at random from the same shares: the busiest rank of that draw, over the mean, is the
// imbalance the micro-batch pays (small decode batches pay for the randomness of routing even
// when the expected load is perfectly even).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model_config.h"
#include "routing/expert_load.h"

namespace daedalus {

struct RoutingStats {
  // Busiest rank's routed (token, expert) pairs over the mean, per MoE layer (index into the
  // model's layers; 1 for dense layers), averaged over the sampled micro-batches.
  std::vector<double> layer_imbalance;
  double imbalance = 1;                // mean of layer_imbalance over MoE layers
  double imbalance_expected = 1;       // the histogram itself on the placement, no sampling
  double imbalance_no_redundant = 1;   // sampled, as `imbalance`, with no redundant experts
  double imbalance_expected_no_redundant = 1;
  bool hierarchical = false;           // whole routing groups per node (node-limited routing kept)
  int64_t max_experts_per_device = 0;  // routed expert slots on the fullest device
  int64_t own_experts_per_device = 0;  // slots that are not redundant replicas (fullest device)
  // Per token, averaged over sampled tokens and MoE layers:
  double remote_node_pairs = 0;    // (token, expert) pairs served on another node
  double local_node_pairs = 0;     // ... on another device of the token's node
  double remote_nodes = 0;         // distinct other nodes a token reaches
  double intra_node_copies = 0;    // link copies when each node receives a token once and forwards it
};

// Expected load per expert with popularity ~ 1 / (rank + 1)^skew (Zipf), a different seeded
// ranking per layer, no expert above 1 / num_experts_per_tok of the pairs (a token picks
// distinct experts); skew 0 is uniform. Dense layers get empty rows, as in a
// `--expert-load-out` file.
ExpertLoad SyntheticExpertLoad(const ModelConfig& config, double skew, uint64_t seed);

// `histogram`: one row per hidden layer (empty rows: uniform). `ranks_per_node`: devices per
// node within the unit of `ep` devices (ep itself when the unit fits in one node).
// `tokens_per_micro_batch`: tokens each device routes per micro-batch.
absl::StatusOr<RoutingStats> SimulateRouting(const ModelConfig& config, const ExpertLoad& histogram, int ep,
                                             int ranks_per_node, int redundant, int64_t tokens_per_micro_batch,
                                             int samples, uint64_t seed);

}  // namespace daedalus
