// Expert parallelism for a command started by mpirun or srun: the MPI transport, the expert
// placement, and gathering per-rank results on rank 0.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "routing/expert_load.h"
#include "routing/placement.h"
#include "routing/transport.h"

namespace daedalus {

class ExpertParallelRun {
 public:
  // Initialises MPI, connects the ranks and places the checkpoint's routed experts over them,
  // per layer, with `redundant_experts` extra replicas: by the load in `placement_from` (an
  // --expert-load-out file) when given, else uniformly; whole routing groups per node when the
  // ranks span several nodes of `ranks_per_node` (0: the launcher's local rank count).
  // Collective.
  static absl::StatusOr<std::unique_ptr<ExpertParallelRun>> Start(const std::string& model_dir, int redundant_experts,
                                                                  const std::string& placement_from,
                                                                  int ranks_per_node, double collective_timeout_s);
  ~ExpertParallelRun();  // finalises MPI

  int rank() const { return transport_->rank(); }
  int world_size() const { return transport_->world_size(); }
  Transport& transport() { return *transport_; }
  const std::vector<Placement>& placements() const { return placements_; }  // by layer
  // Replaces each rank's counts by their sum over ranks. Collective.
  absl::Status SumOverRanks(ExpertLoad& load);
  // Max over MoE layers of the placement's imbalance under `load` (1 is perfect).
  double WorstImbalance(const ExpertLoad& load) const;

  // Every rank's (index, line) pairs, on rank 0 (other ranks get an empty list). Collective.
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> GatherLines(
      const std::vector<std::pair<int64_t, std::string>>& mine);

  // Reports a failed collective and ends every rank (a peer is gone or out of step).
  [[noreturn]] void Abort(const absl::Status& status);

 private:
  std::unique_ptr<Transport> transport_;
  std::vector<Placement> placements_;
};

}  // namespace daedalus
