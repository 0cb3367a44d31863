// Expert placement: which ranks hold which routed experts, with optional redundant replicas
// of hot experts (an EPLB-style balance: replicate the hottest, then pack replicas onto ranks
// to even out the load). Deterministic for the same input.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace daedalus {

struct Placement {
  int world_size = 1;
  std::vector<std::vector<int>> replicas;       // expert → ranks holding it (distinct, ascending)
  std::vector<std::vector<int32_t>> experts_on;  // rank → experts it holds (ascending)

  // The rank that serves slot `k` of token `token` for `expert`: replicas take turns, so the
  // same routing always goes to the same place.
  int RankFor(int32_t expert, int64_t token, int64_t k) const;
  bool Holds(int rank, int32_t expert) const;
  // max over ranks of the load it serves / mean, given per-expert load split evenly over replicas.
  double Imbalance(const std::vector<double>& expert_load) const;
};

// n_experts over world_size ranks with `redundant` extra replicas in total. `expert_load`
// (tokens per expert; empty means uniform) picks which experts get replicas and guides the
// packing. Each rank holds (n_experts + redundant) / world_size experts, ±1; replicas of one
// expert sit on distinct ranks, so redundant <= n_experts * (world_size - 1).
absl::StatusOr<Placement> ComputePlacement(int n_experts, int world_size, int redundant,
                                           const std::vector<double>& expert_load);

// Hierarchical placement for several nodes of `ranks_per_node` consecutive ranks (DeepSeek's
// EPLB): the `n_group` routing groups are spread over the nodes, whole groups per node and
// balancing node load, so group-limited routing stays node-limited; then each node places its
// groups' experts and its share of the replicas over its own ranks with ComputePlacement.
// Needs world_size % ranks_per_node == 0, n_experts % n_group == 0, n_group % nodes == 0 and
// redundant % nodes == 0.
absl::StatusOr<Placement> ComputeHierarchicalPlacement(int n_experts, int n_group, int world_size, int ranks_per_node,
                                                       int redundant, const std::vector<double>& expert_load);

}  // namespace daedalus
