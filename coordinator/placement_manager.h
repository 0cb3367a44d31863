// The coordinator's expert placement: which ranks hold which routed experts, computed from the
// expert load the workers report (or, before any report, the --placement-from load), versioned
// within a generation of the cluster, and replaced only when a new one lowers the imbalance
// enough. Not thread-safe: ClusterState holds it under its mutex.
#pragma once

#include <cstdint>
#include <optional>

#include "core/model_config.h"
#include "proto/cluster.pb.h"
#include "routing/expert_load.h"

namespace daedalus {

struct PlacementOptions {
  int world_size = 1;
  int ranks_per_node = 0;     // > 0: whole routing groups per node
  int redundant_experts = 0;  // extra replicas of hot experts
  ExpertLoad initial_load;    // --placement-from; empty: uniform
  // A new placement is adopted when its imbalance is below this fraction of the current one's.
  double rebalance_gain = 0.9;
};

class PlacementManager {
 public:
  PlacementManager(const ModelConfig& config, PlacementOptions options);

  // A new launch of `world_size` ranks (0: the options'), version 0, placed from the measured
  // load if any was reported, else from the initial load.
  void Reset(int world_size = 0);
  // The cluster shrank (elastic): rank `rank` is gone and the ranks above it move down by one.
  // Its experts that keep a replica elsewhere are served there; each that lost its only copy
  // goes to the survivor with the least measured load in that layer (fewest experts on a tie).
  // Returns how many (layer, expert) pairs lost their only copy: survivors read them from the
  // checkpoint. A new version.
  int64_t RemoveRank(int rank);
  // The cluster grew (elastic): a new last rank holding no expert yet, until FillRank or a
  // Rebalance moves some onto it. A new version.
  void AddRank();
  // Moves experts onto the last rank (just added, empty) until it holds its share of each MoE
  // layer's expert slots: each move takes, from the rank serving the most measured load (uniform
  // when none was measured), the expert that best evens the two. Every other rank only gives
  // experts up, so only the new rank reads any from the checkpoint. Returns the update to send
  // (the next version), or nothing when no expert could move.
  std::optional<v1::PlacementUpdate> FillRank();
  // Adds a step's expert token counts: for each MoE layer in order, one count per expert.
  void AddLoad(const google::protobuf::RepeatedField<int64_t>& expert_tokens);
  // Places again from the measured load; when that lowers the imbalance below rebalance_gain
  // of the current one, adopts it and returns the update to send (the next version).
  std::optional<v1::PlacementUpdate> Rebalance();

  const v1::Placement& placement() const { return placement_; }
  int64_t version() const { return version_; }
  int world_size() const { return world_size_; }
  const ExpertLoad& measured() const { return measured_; }
  // Max over MoE layers of the current placement's imbalance under the measured load (1: even).
  double Imbalance() const { return ImbalanceOf(placement_); }

 private:
  v1::Placement Compute() const;
  double ImbalanceOf(const v1::Placement& placement) const;
  // The current placement as the next version's update.
  v1::PlacementUpdate NextUpdate();

  const ModelConfig& config_;
  const PlacementOptions options_;
  int world_size_;
  v1::Placement placement_;
  int64_t version_ = 0;
  ExpertLoad measured_;  // summed over every report since start
};

}  // namespace daedalus
