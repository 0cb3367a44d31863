// Expert parallelism for a command started by mpirun or srun: the MPI transport, the expert
// placement, and gathering per-rank results on rank 0.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "routing/placement.h"
#include "routing/transport.h"

namespace daedalus {

class ExpertParallelRun {
 public:
  // Initialises MPI, connects the ranks and places the checkpoint's routed experts over them
  // (uniform load, `redundant_experts` extra replicas). Collective.
  static absl::StatusOr<std::unique_ptr<ExpertParallelRun>> Start(const std::string& model_dir, int redundant_experts,
                                                                  double collective_timeout_s);
  ~ExpertParallelRun();  // finalises MPI

  int rank() const { return transport_->rank(); }
  int world_size() const { return transport_->world_size(); }
  Transport& transport() { return *transport_; }
  const Placement& placement() const { return placement_; }

  // Every rank's (index, line) pairs, on rank 0 (other ranks get an empty list). Collective.
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> GatherLines(
      const std::vector<std::pair<int64_t, std::string>>& mine);

  // Reports a failed collective and ends every rank (a peer is gone or out of step).
  [[noreturn]] void Abort(const absl::Status& status);

 private:
  std::unique_ptr<Transport> transport_;
  Placement placement_;
};

}  // namespace daedalus
