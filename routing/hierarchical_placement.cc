#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "routing/placement.h"

namespace daedalus {

absl::StatusOr<Placement> ComputeHierarchicalPlacement(int n_experts, int n_group, int world_size, int ranks_per_node,
                                                       int redundant, const std::vector<double>& expert_load) {
  if (ranks_per_node < 1 || world_size % ranks_per_node != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ranks_per_node must divide world_size = ", world_size, ", found ", ranks_per_node));
  }
  const int nodes = world_size / ranks_per_node;
  if (n_group < 1 || n_experts % n_group != 0 || n_group % nodes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("n_group = ", n_group, " must divide n_experts = ", n_experts,
                                                   " and be a multiple of the ", nodes, " nodes"));
  }
  if (redundant < 0 || redundant % nodes != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("redundant = ", redundant, " must be a non-negative multiple of the ", nodes, " nodes"));
  }
  if (!expert_load.empty() && expert_load.size() != static_cast<size_t>(n_experts)) {
    return absl::InvalidArgumentError(absl::StrCat("expert_load must be empty or have n_experts = ", n_experts,
                                                   " entries, found ", expert_load.size()));
  }
  const int group_size = n_experts / n_group, groups_per_node = n_group / nodes;
  auto load_of = [&](int e) { return expert_load.empty() ? 1.0 : expert_load[e]; };

  // Groups to nodes: heaviest group first onto the lightest node with room (ties: lower ids).
  std::vector<double> group_load(n_group, 0.0);
  for (int e = 0; e < n_experts; ++e) group_load[e / group_size] += load_of(e);
  std::vector<int> order(n_group);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return group_load[a] > group_load[b]; });
  std::vector<std::vector<int>> node_groups(nodes);
  std::vector<double> node_load(nodes, 0.0);
  for (int g : order) {
    int best = -1;
    for (int n = 0; n < nodes; ++n) {
      if (static_cast<int>(node_groups[n].size()) == groups_per_node) continue;
      if (best < 0 || node_load[n] < node_load[best]) best = n;
    }
    node_groups[best].push_back(g);
    node_load[best] += group_load[g];
  }

  // Within each node: its experts and a share of the replicas over its ranks.
  Placement placement;
  placement.world_size = world_size;
  placement.replicas.assign(n_experts, {});
  placement.experts_on.assign(world_size, {});
  for (int n = 0; n < nodes; ++n) {
    std::sort(node_groups[n].begin(), node_groups[n].end());
    std::vector<int> experts;  // node-local index → expert id
    for (int g : node_groups[n])
      for (int e = g * group_size; e < (g + 1) * group_size; ++e) experts.push_back(e);
    std::vector<double> local_load;
    if (!expert_load.empty())
      for (int e : experts) local_load.push_back(expert_load[e]);
    ASSIGN_OR_RETURN(Placement local, ComputePlacement(static_cast<int>(experts.size()), ranks_per_node,
                                                       redundant / nodes, local_load));
    for (size_t i = 0; i < experts.size(); ++i)
      for (int r : local.replicas[i]) placement.replicas[experts[i]].push_back(n * ranks_per_node + r);
  }
  for (int e = 0; e < n_experts; ++e) {
    std::sort(placement.replicas[e].begin(), placement.replicas[e].end());
    for (int r : placement.replicas[e]) placement.experts_on[r].push_back(e);
  }
  return placement;
}

}  // namespace daedalus
