// Whether one worker is alive, as the coordinator judges it from what the worker sends: lost
// when nothing has been heard for the heartbeat timeout, or when it has sequences to run and
// heartbeats arrive but its step count has not advanced for the stall timeout (a wedged engine,
// a collective that never completes). An idle worker is never stalled. Pure bookkeeping, fed
// the clock; not thread-safe (ClusterState holds it under its mutex).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace daedalus {

class WorkerHealth {
 public:
  using Clock = std::chrono::steady_clock;
  struct Limits {
    std::chrono::milliseconds heartbeat_timeout{5000};
    std::chrono::milliseconds stall_timeout{60000};  // 0: off
  };

  // Heard from now, and counted as progressing from now (registration, attachment).
  void Restart(Clock::time_point now) { last_heard_ = progress_at_ = now; }

  // Any message from the worker; `stepped`: it carried the results of a step.
  void Heard(Clock::time_point now, bool stepped = false);
  // A heartbeat: its step count and the sequences it says it runs.
  void OnHeartbeat(int64_t step, int64_t running, Clock::time_point now);
  // Why the worker is lost at `now`, or empty. `admitted`: sequences the coordinator admitted
  // to it and not yet finished (it may not have reported them yet).
  std::string Check(int64_t admitted, Clock::time_point now, const Limits& limits);

  int64_t step() const { return step_; }
  Clock::time_point last_heard() const { return last_heard_; }

 private:
  Clock::time_point last_heard_;
  Clock::time_point progress_at_;  // its last step, or when it was last seen idle
  int64_t step_ = -1;              // the step count of its last heartbeat
  int64_t reported_running_ = 0;   // sequences its last heartbeat said it runs
};

}  // namespace daedalus
