// The coordinator's bookkeeping, without any gRPC: whether the cluster serves, and what a lost
// or joining worker changes (elastic clusters). Its rooms: the workers and their formation
// (coordinator/registry.h), their health (worker_health.h), the requests and where each
// sequence lives (admission.h, sharding.h), and the expert placement (placement_manager.h).
// The gRPC services are thin shells around it, and tests drive it with fake workers.
// Thread-safe: one mutex, never held while blocking.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <condition_variable>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/admission.h"
#include "coordinator/metrics.h"
#include "coordinator/placement_manager.h"
#include "coordinator/registry.h"
#include "coordinator/worker_health.h"
#include "coordinator/request_channel.h"
#include "core/model_config.h"
#include "proto/cluster.pb.h"
#include "proto/serving.pb.h"
#include "routing/expert_load.h"

namespace daedalus {

struct CoordinatorOptions {
  int world_size = 1;                                // workers the cluster needs to serve
  int64_t max_queue = 1024;                          // requests waiting for admission; beyond: RESOURCE_EXHAUSTED
  std::chrono::milliseconds queue_timeout{30000};    // default wait for admission
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds heartbeat_timeout{5000};  // silence after which a worker is lost
  // A worker with sequences running whose step count has not advanced this long is lost, even
  // though it heartbeats (a wedged engine, a collective that never completes). Longer than the
  // longest step; 0: off.
  std::chrono::milliseconds stall_timeout{60000};
  int redundant_experts = 0;                         // extra replicas of hot experts
  int ranks_per_node = 0;                            // > 0: whole routing groups per node
  ExpertLoad placement_load;                         // initial expert load (--placement-from)
  // Rebalance: a new placement from the measured load is sent to the workers when it lowers
  // the imbalance below this fraction of the current one (0: never).
  double rebalance_gain = 0.9;
  std::chrono::milliseconds rebalance_interval{0};  // how often the server tries (0: never)
  // Latent cache format every worker must use ("bf16" | "f32" | "fp8"); empty: any.
  std::string kv_dtype;
  // Prefix-aware routing: a request goes to the worker holding the longest cached prefix of its
  // prompt unless that worker runs this many sequences more than the least busy worker that
  // could take it (then, as without a cached prefix: the most free KV).
  int64_t prefix_route_slack = 8;
  // Elastic: a worker registered to join that has not attached (loaded its weights) by then is
  // forgotten, so that another may join.
  std::chrono::milliseconds join_timeout{600000};
  // The role of this cluster's workers: "mixed", or one group of a prefill/decode deployment
  // ("prefill" | "decode"; coordinator/cluster.h joins the two and routes each worker to its
  // group by the role it registers with).
  std::string role = "mixed";
  // Prefill/decode disaggregation (coordinator/cluster.h): the workers of each group; both 0:
  // one group of world_size mixed workers.
  int prefill_world_size = 0, decode_world_size = 0;
};

class ClusterState {
 public:
  using Clock = std::chrono::steady_clock;

  ClusterState(ModelConfig config, std::string model_name, CoordinatorOptions options, Metrics* metrics);

  // A worker announces itself. A new launch_id starts a new generation of the cluster: the
  // previous one's workers are told to shut down and its requests fail UNAVAILABLE. An empty
  // launch_id joins the generation that is forming from such workers, or starts one; rank -1
  // takes the lowest free rank. Returns the generation and the rank.
  //
  // Elastic clusters (every worker on the ucx data plane, on the CPU): while fewer than
  // world_size serve, a ucx worker of the same launch (or of none) joins instead, with the next
  // rank, in the generation after the current one; it loads its weights, and when it attaches
  // the others are sent a Reform that takes it in, then a placement that moves experts onto it.
  // One joins at a time: another gets UNAVAILABLE until then.
  struct Registration {
    int64_t generation;
    int rank;
  };
  absl::StatusOr<Registration> Register(const v1::RegisterRequest& request, Clock::time_point now);
  // The assignment of `generation` for `rank` once every rank has registered; Unavailable if
  // that has not happened by `deadline`, Aborted if a newer launch replaced it.
  absl::StatusOr<v1::Assignment> WaitAssignment(int64_t generation, int rank, Clock::time_point deadline);
  // The worker's control stream is open and its weights are loaded; when every rank of the
  // generation is attached the cluster serves. `rank` and `generation` are those its Hello
  // named; the calls below take them too, and they keep naming the worker across re-formations.
  absl::Status Attach(int rank, int64_t generation, std::shared_ptr<WorkerLink> link, Clock::time_point now);
  // The worker is gone (stream closed, heartbeats missed, steps stalled, reported failure).
  // Elastic clusters shrink: a new generation of the survivors, renumbered in order, is sent a
  // Reform; the experts it alone held are placed on survivors; its sequences go back to the
  // head of the queue and continue on survivors after the tokens already streamed (Admit.
  // generated_ids), so their clients see no error. Otherwise the cluster is degraded until a
  // new launch registers; every request fails UNAVAILABLE naming the rank, and the other
  // workers are told to register again (Shutdown.reregister).
  void Lose(int rank, int64_t generation, const std::string& why);
  void OnEvents(int rank, int64_t generation, const v1::StepEvents& events, Clock::time_point now);
  void OnHeartbeat(int rank, int64_t generation, const v1::Heartbeat& heartbeat, Clock::time_point now);
  // Elastic: the worker's collective failed waiting for `lost.ranks` (of world lost.generation).
  // A rank named by every other worker of the current world is lost at once. Several hung at
  // once cannot be named by all others: when every rank has either reported or been named, and
  // each named rank that has not reported is named by every rank that has, those are lost
  // together once that has held for heartbeat_timeout (CheckDeadlines) — time for a live rank
  // a step behind them, named by the ranks ahead, to report (its own collective times out
  // sooner) and so clear itself.
  void OnPeersLost(int rank, int64_t generation, const v1::PeersLost& lost, Clock::time_point now);
  // Loses workers silent for longer than heartbeat_timeout, and busy workers whose step count
  // has not advanced for stall_timeout; fails queued requests whose admission deadline has
  // passed. Called about every 100 ms by the server.
  void CheckDeadlines(Clock::time_point now);

  // Queues a validated request; UNAVAILABLE when not serving, RESOURCE_EXHAUSTED over the
  // queue limit or when no worker's KV cache could ever hold it.
  absl::StatusOr<std::shared_ptr<RequestChannel>> Submit(const v1::GenerateRequest& request,
                                                         Clock::time_point admission_deadline, Clock::time_point now);
  // The client is gone ("cancelled"), or has what it wanted ("stop": a stop string): dequeue,
  // or abort on the worker and free its KV reservation.
  void Cancel(uint64_t sequence, const std::string& reason = "cancelled");
  // Tells every attached worker to stop (the cluster is shutting down; an elastic one no longer
  // shrinks as they leave).
  void ShutdownWorkers(const std::string& reason);
  // Places the experts again from the load measured so far and, when that lowers the
  // imbalance enough (rebalance_gain), sends the new placement to every worker. True when sent.
  bool Rebalance();

  // Prefill/decode disaggregation (coordinator/cluster.h moves sequences between the groups).
  // Prefill group: the sequences whose pages are ready to be read, and the release of a
  // sequence's pages once its decode worker no longer needs them.
  std::vector<Admission::HandOff> TakeHandOffs();
  void Release(uint64_t sequence);
  // Decode group: takes a handed-off sequence; and the sequences whose prefill copy is no
  // longer needed (for the prefill group's Release).
  void Accept(Admission::HandOff hand_off, Clock::time_point now);
  // RESOURCE_EXHAUSTED (counted in the metrics) when no worker's cache here could hold the
  // request: the decode group's check, made before the prefill group takes it.
  absl::Status CheckFits(const v1::GenerateRequest& request);
  int64_t LongestSequence() const;  // Admission::LongestSequence
  std::vector<uint64_t> TakeReleased();

  bool serving() const;
  std::string state() const;  // "forming" | "serving" | "degraded"
  int64_t generation() const;
  v1::ClusterStatusResponse Status(Clock::time_point now) const;

 private:
  using Worker = Registry::Worker;
  using WorkerState = Registry::WorkerState;
  // Admits from the queue while the cluster serves.
  void AdmitLocked();
  void LoseLocked(int rank, const std::string& why);
  // Elastic loss of `rank` (described by `what`): see Lose.
  void ShrinkLocked(int rank, const std::string& what);
  void ClearPeerReportsLocked();  // a new world: the old one's reports no longer count
  // Sends every worker but `except` (-1: all) a Reform to the current generation and placement;
  // `join`: the world only grew (v1::Reform::join).
  void SendReformLocked(int except, const std::string& reason, bool join = false);
  // Sends every worker the update, when there is one; whether there was.
  bool SendPlacementLocked(std::optional<v1::PlacementUpdate> update);
  static void SendShutdown(WorkerLink& link, const std::string& reason, bool reregister = false);
  bool serving_locked() const;
  // "prefill " or "decode " before "worker" in what the log and errors say; nothing when mixed.
  std::string role_prefix() const { return options_.role == "mixed" ? "" : options_.role + " "; }
  std::string state_detail_locked() const;

  const ModelConfig config_;
  const std::string model_name_;
  const CoordinatorOptions options_;
  Metrics* const metrics_;

  mutable std::mutex mu_;
  std::condition_variable formed_;
  Registry registry_;                            // the workers, by rank, of the current generation
  std::vector<std::optional<Worker>>& workers_;  // registry_'s
  std::string degraded_;                        // why, when a worker of this generation was lost
  // Elastic: rank → the ranks that reported it lost, in the current generation; the ranks that
  // reported; and the ranks suspected hung together (see OnPeersLost), since when.
  std::map<int, std::set<int>> peers_lost_;
  std::set<int> reporters_, suspects_;
  Clock::time_point suspected_since_;
  bool shutting_down_ = false;  // ShutdownWorkers was called: workers leaving are not a loss to recover from
  PlacementManager placement_;                  // of the current generation, and the measured load
  Admission admission_;                         // the requests, queued or on a worker
};

}  // namespace daedalus
