// The cluster the coordinator serves: one group of mixed workers (coordinator/cluster_state.h),
// or, with prefill/decode disaggregation, a prefill group and a decode group, each its own EP
// group (ranks, data plane, lockstep, expert placement, elastic re-formation), as DeepSeek
// runs them.
//
// A request then flows: the prefill group admits it with hand_off (to the prefill worker
// holding its longest cached prefix, else the most free KV); the worker streams the first token
// and reports the pages it holds; the sequence moves to the decode group, which admits it to
// the worker with the most free KV with a kv_source naming those pages; that worker reads them
// (routing/kv_transfer.h) and decodes on; its receipt — or its giving up, when it computes the
// sequence again instead — releases the prefill worker's pages. The client's call sees one
// stream throughout.
//
// The groups are never locked together: what one group hands to the other waits in an outbox
// that every call drains once it has left the group (WithHandOffs). Workers name their group by
// the role in their registration and Hello; ranks and generations number each group on its own.
// Thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "coordinator/cluster_state.h"

namespace daedalus {

class Cluster {
 public:
  using Clock = std::chrono::steady_clock;

  // options.prefill_world_size and decode_world_size both 0: one group of options.world_size
  // mixed workers. Otherwise both must be at least 1 (options.world_size is ignored).
  static absl::StatusOr<std::unique_ptr<Cluster>> Create(const ModelConfig& config, const std::string& model_name,
                                                         const CoordinatorOptions& options, Metrics* metrics);

  bool disaggregated() const { return decode_ != nullptr; }

  // As ClusterState's, for the worker's group (its role: empty is "mixed").
  absl::StatusOr<ClusterState::Registration> Register(const v1::RegisterRequest& request, Clock::time_point now);
  absl::StatusOr<v1::Assignment> WaitAssignment(const std::string& role, int64_t generation, int rank,
                                                Clock::time_point deadline);
  absl::Status Attach(const std::string& role, int rank, int64_t generation, std::shared_ptr<WorkerLink> link,
                      Clock::time_point now);
  void Lose(const std::string& role, int rank, int64_t generation, const std::string& why);
  void OnEvents(const std::string& role, int rank, int64_t generation, const v1::StepEvents& events, Clock::time_point now);
  void OnHeartbeat(const std::string& role, int rank, int64_t generation, const v1::Heartbeat& heartbeat, Clock::time_point now);
  void OnPeersLost(const std::string& role, int rank, int64_t generation, const v1::PeersLost& lost, Clock::time_point now);

  // As ClusterState's, over both groups.
  void CheckDeadlines(Clock::time_point now);
  absl::StatusOr<std::shared_ptr<RequestChannel>> Submit(const v1::GenerateRequest& request,
                                                         Clock::time_point admission_deadline, Clock::time_point now);
  void Cancel(uint64_t sequence, const std::string& reason = "cancelled");
  void ShutdownWorkers(const std::string& reason);
  bool Rebalance();
  bool serving() const;
  std::string state() const;  // the worse of the groups': "degraded", then "forming", then "serving"
  // The most KV tokens one sequence may take, prompt and generated: in the group that holds it
  // to its end (the decode group, when disaggregated).
  int64_t LongestSequence() const;
  // The workers of both groups (each with its role), the queue of both, and the expert
  // placement of the decode group (where steady-state load runs).
  v1::ClusterStatusResponse Status(Clock::time_point now) const;

 private:
  Cluster() = default;
  // The group of workers registered with `role`; null when this cluster has none.
  ClusterState* Group(const std::string& role) const;
  // Runs `change` on the groups under hand_off_mu_, then moves what each group handed the other:
  // ready sequences to the decode group, and releases of their pages back to the prefill group.
  void WithHandOffs(const std::function<void()>& change);

  // mixed: group_ alone; disaggregated: group_ is the prefill group.
  std::unique_ptr<ClusterState> group_, decode_;
  Metrics* metrics_ = nullptr;
  // Held from a group's events (which may hand a sequence off) until the hand-off is moved, and
  // while Cancel looks for a sequence (WithHandOffs), so that a sequence is always in one group
  // when it is looked for. Taken before a group's lock.
  std::mutex hand_off_mu_;
};

}  // namespace daedalus
