// The workers of the cluster's current launch, without sequences or gRPC: registration checks,
// formation (a launch of N ranks forms once N have registered; each then attaches its control
// stream), the one elastic joiner at a time, and a worker's removal from an elastic world (the
// others renumbered in order). Generations number the formations. Pure bookkeeping, fed the
// clock; not thread-safe (ClusterState holds it under its mutex, beside the sequences that
// point into it).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/worker_health.h"
#include "proto/cluster.pb.h"

namespace daedalus {

// The coordinator's end of one worker's control stream.
class WorkerLink {
 public:
  virtual ~WorkerLink() = default;
  // Queues a message for the worker without blocking; false when the stream is gone.
  virtual bool Send(const v1::CoordinatorMessage& message) = 0;
};

class Registry {
 public:
  using Clock = std::chrono::steady_clock;

  enum class WorkerState { kLoading, kReady, kLost };
  struct Worker {
    v1::RegisterRequest info;  // rank and world_size: the current ones
    int hello_rank = -1;       // as its Hello named it (Attach), for the calls that follow
    int64_t hello_generation = -1;
    WorkerState state = WorkerState::kLoading;
    std::shared_ptr<WorkerLink> link;
    WorkerHealth health;
    // Admission's, kept here with the worker they describe.
    int64_t kv_reserved = 0;  // tokens, page-rounded, of sequences admitted here
    int64_t running = 0;
    // Prefix caching: the content names of the full pages it holds cached (as reported), and
    // those of prompts admitted here whose first token has not come back yet (their pages are
    // being computed), counted by sequence.
    std::unordered_set<uint64_t> prefix_pages;
    std::unordered_map<uint64_t, int> prefix_pending;
    int64_t prompt_tokens = 0, prompt_tokens_cached = 0, kv_evictions = 0, preemptions = 0;  // as reported
    int64_t prefix_routed = 0;  // requests sent here for the prefix it held
    double step_ms_median = 0, step_ms_max = 0;  // over its last heartbeat interval, as reported
    int64_t kv_held_tokens = 0;                   // as reported
  };

  // `world_size`: the workers a launch needs; `kv_dtype`: the latent cache format every worker
  // must use (empty: any).
  Registry(int world_size, std::string kv_dtype);

  struct Registered {
    int64_t generation = 0;
    int rank = -1;
    bool joins = false;  // elastic: taken into the serving world when it attaches
    // A new launch: it replaced the previous one, whose attached workers these links reach.
    bool new_launch = false;
    std::vector<std::shared_ptr<WorkerLink>> superseded;
  };
  // A worker announces itself. A new launch_id starts a new launch (a new generation). An empty
  // launch_id joins the anonymous launch still forming (when `open` — nothing was lost in it),
  // or starts one; rank -1 takes the lowest free rank. Workers on ucx whose world shrank may
  // form a launch smaller than world_size. With `can_join` (the cluster serves elastically), a
  // ucx worker of the same launch (or of none) joins instead while fewer than world_size serve,
  // with the next rank in the next generation; one at a time (UNAVAILABLE otherwise).
  absl::StatusOr<Registered> Register(const v1::RegisterRequest& r, bool can_join, bool open, Clock::time_point now);
  // Every rank of `generation` has registered (for the joiner's: at once).
  bool Formed(int64_t generation) const;
  // Where `rank` of `generation` stands: data-plane addresses by rank, its rank and the world,
  // and whether it joins (the placement and heartbeat interval are the caller's). Call once Formed.
  v1::Assignment Assignment(int64_t generation, int rank) const;
  // The worker's control stream is open and its weights loaded. A member of the current
  // generation becomes ready; the joiner enters the world as its last rank, in a new generation.
  enum class Attached { kMember, kJoined };
  absl::StatusOr<Attached> Attach(int rank, int64_t generation, std::shared_ptr<WorkerLink> link, Clock::time_point now);
  // The worker whose Hello named (rank, generation), and its current rank; null when none.
  Worker* Find(int hello_rank, int64_t generation, int* rank = nullptr);
  // Elastic: `rank` leaves the world; the ranks above it move down by one, in a new generation.
  // A joiner planned for the old world must register again.
  void Remove(int rank);
  // Forgets a joiner that registered longer than `timeout` ago without attaching.
  void ForgetStaleJoiner(Clock::time_point now, std::chrono::milliseconds timeout);

  // Every worker on the ucx data plane and the CPU: the world can shrink and grow while serving.
  bool elastic() const;
  // Every rank of the launch registered and attached.
  bool all_ready() const;
  int64_t generation() const { return generation_; }
  const std::string& launch_id() const { return launch_id_; }
  int launch_world() const { return launch_world_; }
  // By current rank; an empty slot is a rank not registered yet.
  std::vector<std::optional<Worker>>& workers() { return workers_; }
  const std::vector<std::optional<Worker>>& workers() const { return workers_; }

 private:
  const int world_size_;
  const std::string kv_dtype_;
  int64_t generation_ = 0;
  std::string launch_id_;
  int launch_world_;  // workers the current launch forms with: world_size, or fewer (elastic, shrunk)
  std::vector<std::optional<Worker>> workers_;
  std::optional<Worker> joining_;  // elastic: to join as rank workers_.size() in generation_ + 1
};

}  // namespace daedalus
