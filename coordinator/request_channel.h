// Where a Generate call waits: its sequence's tokens and end, filled by ClusterState as worker
// events arrive, drained by the call's handler. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "proto/serving.pb.h"

namespace daedalus {

class RequestChannel {
 public:
  using Clock = std::chrono::steady_clock;

  // What arrived since the previous Take.
  struct News {
    std::vector<v1::GeneratedToken> tokens;
    int worker_rank = -1;        // once admitted
    bool finished = false;
    std::string finish_reason;   // when finished and status is OK
    absl::Status status;         // when finished: OK, or why the request failed
  };

  explicit RequestChannel(uint64_t sequence) : sequence_(sequence) {}
  uint64_t sequence() const { return sequence_; }

  void Admitted(int rank);
  void Push(v1::GeneratedToken token);
  // Prompt tokens the worker read from its prefix cache (known with the first token).
  void SetCachedTokens(int64_t n);
  int64_t cached_tokens() const;
  // The first Finish wins; later ones are ignored.
  void Finish(std::string reason, absl::Status status);

  // Waits until the request is admitted or has ended, or `until` passes, taking nothing.
  // Returns the failure when it ended without being admitted, else OK.
  absl::Status WaitAdmitted(Clock::time_point until);

  // Waits until there is news or `until` passes, then moves the news into `out`.
  // Returns out.finished.
  bool Take(Clock::time_point until, News& out);

 private:
  const uint64_t sequence_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  News news_;
  bool fresh_ = false;  // news_ holds something not yet taken
  bool finished_ = false;
  int64_t cached_tokens_ = 0;
};

}  // namespace daedalus
