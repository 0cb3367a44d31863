#include "coordinator/worker_health.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace daedalus {

void WorkerHealth::Heard(Clock::time_point now, bool stepped) {
  last_heard_ = now;
  if (stepped) progress_at_ = now;
}

void WorkerHealth::OnHeartbeat(int64_t step, int64_t running, Clock::time_point now) {
  last_heard_ = now;
  if (step != step_) {
    step_ = step;
    progress_at_ = now;
  }
  reported_running_ = running;
}

std::string WorkerHealth::Check(int64_t admitted, Clock::time_point now, const Limits& limits) {
  using std::chrono::duration_cast;
  using std::chrono::milliseconds;
  const auto silent = duration_cast<milliseconds>(now - last_heard_);
  if (silent > limits.heartbeat_timeout) {
    return absl::StrCat("no heartbeat for ", silent.count(), " ms (limit ", limits.heartbeat_timeout.count(), " ms)");
  }
  const int64_t busy = std::max(admitted, reported_running_);
  if (busy == 0 || limits.stall_timeout.count() <= 0) {
    progress_at_ = now;  // idle: its clock restarts
    return "";
  }
  const auto stalled = duration_cast<milliseconds>(now - progress_at_);
  if (stalled <= limits.stall_timeout) return "";
  return absl::StrCat("heartbeats arrive but no step has finished for ", stalled.count(), " ms with ", busy,
                      " sequences to run (step ", step_, "; limit ", limits.stall_timeout.count(), " ms, --stall-timeout)");
}

}  // namespace daedalus
