// Admission and attention sharding: the requests the coordinator holds, queued in arrival
// order or admitted to a worker, with the KV cache each reserved there. The queue's head goes to
// the worker ChooseWorker picks (coordinator/sharding.h: free KV, the prompt's cached prefix)
// as an Admit; a step's tokens and ends go back to the request's channel; a lost worker's
// sequences return to the head of the queue and continue after the tokens already streamed.
// Works on the registry's workers (their kv_reserved, running and prefix_pending are its
// bookkeeping). Not thread-safe: ClusterState calls it under its mutex, and only admits while
// the cluster serves.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/metrics.h"
#include "coordinator/registry.h"
#include "coordinator/request_channel.h"
#include "core/model_config.h"
#include "proto/cluster.pb.h"
#include "proto/serving.pb.h"

namespace daedalus {

class Admission {
 public:
  using Clock = std::chrono::steady_clock;
  using Worker = Registry::Worker;

  struct Options {
    int64_t max_queue = 1024;                        // requests waiting; beyond: RESOURCE_EXHAUSTED
    std::chrono::milliseconds queue_timeout{30000};  // a requeued sequence waits at least this long again
    int64_t prefix_route_slack = 8;                  // coordinator/sharding.h
    // Prefill/decode disaggregation: the role of these workers. "prefill": sequences are admitted
    // with hand_off, reserve their prompt's pages only, and leave through TakeHandOffs once their
    // pages are ready; "decode": they arrive through Accept. Counted per role in the metrics.
    std::string role = "mixed";
  };

  // A sequence leaving a prefill worker for a decode worker: everything its client's call
  // needs, and where its latents are.
  struct HandOff {
    uint64_t id = 0;
    v1::GenerateRequest request;
    std::shared_ptr<RequestChannel> channel;
    std::vector<int32_t> streamed;
    Clock::time_point submitted, admission_deadline, last_token;
    v1::KvSource source;
  };

  // `workers`: the registry's, by current rank; outlives this.
  Admission(const ModelConfig& config, Options options, Metrics* metrics, std::vector<std::optional<Worker>>& workers);

  // Queues a validated request; RESOURCE_EXHAUSTED over the queue limit or when no worker's KV
  // cache could ever hold it (both counted in the metrics).
  absl::StatusOr<std::shared_ptr<RequestChannel>> Submit(const v1::GenerateRequest& request,
                                                         Clock::time_point admission_deadline, Clock::time_point now);
  // Admits from the head of the queue while a worker has room for it: first come, first served.
  void AdmitWaiting();
  // The client is gone ("cancelled") or has what it wanted ("stop"): dequeue, or abort on the
  // worker and free its reservation.
  void Cancel(uint64_t sequence, const std::string& reason);
  // A step's tokens and ends, from worker `rank` (events of sequences not on it are stale).
  void OnEvents(int rank, const v1::StepEvents& events, Clock::time_point now);
  // Worker `rank` leaves an elastic world (before the registry renumbers): the sequences above
  // it follow their worker's new rank; its own go back to the head of the queue, unless their
  // last token was already streamed (they end, "length" or "stop") or no other worker's cache
  // could hold them (UNAVAILABLE naming `what`). Returns how many were requeued.
  int64_t Requeue(int rank, const std::string& what, Clock::time_point now);
  // The cluster cannot go on: every sequence ends, those on worker `rank` with `on_rank`, the
  // others (queued too) with `others`.
  void EndAll(int rank, const absl::Status& on_rank, const absl::Status& others);
  // Ends queued requests whose admission deadline has passed (RESOURCE_EXHAUSTED).
  void ExpireQueue(Clock::time_point now);

  // Prefill/decode disaggregation. Prefill side: the sequences whose pages became ready since
  // the previous call (their prefill worker holds them, and its reservation stays, until
  // Release); and Release, which tells that worker to free them.
  std::vector<HandOff> TakeHandOffs();
  void Release(uint64_t sequence);
  // Decode side: queues a handed-off sequence (RESOURCE_EXHAUSTED ends it when no decode worker
  // could hold it); it is admitted with its kv_source. The sequences whose prefill copy is no
  // longer needed since the previous call — read, or given up on and computed again — for the
  // prefill side's Release.
  void Accept(HandOff h, Clock::time_point now);
  std::vector<uint64_t> TakeReleased();

  // RESOURCE_EXHAUSTED naming both when the KV the request needs here is more than the largest
  // of these workers' caches holds.
  absl::Status Fits(const v1::GenerateRequest& request) const;
  // Whether `status` is Fits' refusal: RESOURCE_EXHAUSTED that waiting cannot cure (no worker's
  // cache could ever hold the request), which an HTTP client must not retry as a rate limit.
  static bool NeverFits(const absl::Status& status);
  // The most KV tokens (prompt and generated) one sequence may reserve here: the largest
  // worker cache, in whole pages (0 before any worker has registered).
  int64_t LongestSequence() const;

  int64_t queued() const { return static_cast<int64_t>(queue_.size()); }
  int64_t held() const { return static_cast<int64_t>(sequences_.size()); }

 private:
  struct Sequence {
    uint64_t id = 0;
    v1::GenerateRequest request;
    std::shared_ptr<RequestChannel> channel;
    int rank = -1;  // attention rank once admitted
    int64_t reserved = 0;
    Clock::time_point submitted, admission_deadline, last_token;
    bool got_token = false;
    std::vector<int32_t> streamed;     // token ids delivered to the client so far
    std::vector<uint64_t> page_names;  // of the prompt's full pages (core/prefix_hash.h)
    bool names_pending = false;        // page_names count in its worker's prefix_pending
    std::optional<v1::KvSource> kv_source;  // decode side: where its latents are, until read
  };
  // Prefill side: the worker holding a handed-off sequence's pages, and its reservation there.
  struct Held {
    int rank = -1;
    int64_t reserved = 0;
  };
  using Sequences = std::map<uint64_t, Sequence>;

  int64_t Reservation(const v1::GenerateRequest& request) const;  // KV tokens, page-rounded
  int64_t LargestCache(int except) const;                          // of the workers but `except`
  int64_t PageSize() const;                                        // KV tokens a page holds
  // The worker for a sequence needing `need` KV tokens (-1: none has room).
  int Choose(const Sequence& s, int64_t need);
  // Leading pages of the prompt that worker `w` holds or is computing.
  int64_t CachedPrefixPages(const Worker& w, const Sequence& s) const;
  void ClearPendingNames(Sequence& s);
  // Ends a sequence and forgets it; frees its reservation.
  void End(Sequences::iterator it, const std::string& reason, const absl::Status& status);
  // Decode side: the sequence no longer needs its prefill copy.
  void DropSource(Sequence& s);
  void StartHandOff(Sequences::iterator it, const v1::KvReady& ready);

  const ModelConfig& config_;
  const Options options_;
  Metrics* const metrics_;
  std::vector<std::optional<Worker>>& workers_;
  Sequences sequences_;          // queued or admitted
  std::map<uint64_t, Held> held_;  // prefill side: handed off, pages held until Release
  std::vector<HandOff> hand_offs_;
  std::vector<uint64_t> released_;
  std::deque<uint64_t> queue_;   // waiting for admission, in arrival order
  uint64_t next_sequence_ = 1;
};

}  // namespace daedalus
