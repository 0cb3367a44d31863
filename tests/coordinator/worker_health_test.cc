// A worker's health on a clock: heartbeats with and without progress, step events, idle
// spells, admissions not yet reported, silence, and the verdict at each point.
#include "coordinator/worker_health.h"

#include <gtest/gtest.h>

namespace daedalus {
namespace {

using std::chrono::milliseconds;

// The stall rule: busy (admitted or reported sequences) with heartbeats arriving but the step
// count frozen; progress by a new step count or by step events restarts the clock; idle
// restarts it too.
TEST(WorkerHealth, StallsOnlyWhileBusyWithoutProgress) {
  const WorkerHealth::Clock::time_point t0{};
  const WorkerHealth::Limits limits{milliseconds(3000), milliseconds(5000)};
  auto at = [&](int64_t ms) { return t0 + milliseconds(ms); };
  WorkerHealth h;
  h.Restart(at(0));
  struct Row {
    const char* what;
    int64_t ms;
    int64_t step, running;  // the heartbeat at `ms` (step -1: none, step events instead)
    int64_t admitted;
    const char* lost;
  };
  const Row rows[] = {
      {"busy, stepping", 1000, 1, 2, 2, ""},
      {"busy, stepping", 2000, 2, 2, 2, ""},
      {"busy, frozen at step 2 for 4 s: within the limit", 6000, 2, 2, 2, ""},
      {"frozen for 5.5 s: stalled, naming the step", 7500, 2, 2, 2, "no step has finished for 5500 ms with 2 sequences"},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.what);
    if (r.step >= 0) h.OnHeartbeat(r.step, r.running, at(r.ms));
    else h.Heard(at(r.ms), true);
    const std::string why = h.Check(r.admitted, at(r.ms), limits);
    if (*r.lost == '\0') EXPECT_EQ(why, "");
    else EXPECT_NE(why.find(r.lost), std::string::npos) << why;
  }
  // Step events count as progress; an idle check restarts the clock.
  WorkerHealth g;
  g.Restart(at(0));
  g.OnHeartbeat(5, 1, at(1000));
  g.Heard(at(5500), /*stepped=*/true);
  g.OnHeartbeat(5, 1, at(9000));
  EXPECT_EQ(g.Check(1, at(9000), limits), "");  // 3.5 s since the step events
  g.OnHeartbeat(5, 0, at(12000));
  EXPECT_EQ(g.Check(0, at(12000), limits), "");  // idle: not stalled, and the clock restarts
  g.OnHeartbeat(5, 1, at(14000));
  EXPECT_EQ(g.Check(1, at(16000), limits), "");  // busy again 4 s after the idle check
  g.OnHeartbeat(5, 1, at(16500));  // the same step: no progress
  EXPECT_NE(g.Check(1, at(17100), limits).find("no step has finished for 5100 ms"), std::string::npos);
  // The coordinator's admissions count before the worker reports them.
  WorkerHealth k;
  k.Restart(at(0));
  for (int64_t ms : {1000, 3000, 5000, 6500}) k.OnHeartbeat(1, /*running=*/0, at(ms));
  EXPECT_NE(k.Check(/*admitted=*/1, at(6500), limits).find("with 1 sequences to run (step 1"), std::string::npos);
  EXPECT_EQ(k.Check(/*admitted=*/0, at(6500), limits), "");
  // Stall detection off.
  WorkerHealth off;
  off.Restart(at(0));
  off.OnHeartbeat(1, 3, at(100));
  off.OnHeartbeat(1, 3, at(2900));
  EXPECT_EQ(off.Check(3, at(2900), WorkerHealth::Limits{milliseconds(3000), milliseconds(0)}), "");
}

// Silence: nothing heard for the heartbeat timeout, whatever the work.
TEST(WorkerHealth, SilenceLosesTheWorker) {
  const WorkerHealth::Clock::time_point t0{};
  const WorkerHealth::Limits limits{milliseconds(3000), milliseconds(5000)};
  WorkerHealth h;
  h.Restart(t0);
  h.Heard(t0 + milliseconds(1000));  // a message that is not a step
  EXPECT_EQ(h.Check(0, t0 + milliseconds(4000), limits), "");
  const std::string why = h.Check(0, t0 + milliseconds(4001), limits);
  EXPECT_EQ(why, "no heartbeat for 3001 ms (limit 3000 ms)");
}

}  // namespace
}  // namespace daedalus
