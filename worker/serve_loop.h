// A worker's life after registration: take admissions and aborts from the control stream,
// step the engine in lockstep with the other ranks, stream token events back, heartbeat.
#pragma once

#include <chrono>
#include <functional>

#include "absl/status/status.h"
#include "routing/transport.h"
#include "worker/control_client.h"
#include "worker/engine.h"

namespace daedalus {

struct ServeLoopOptions {
  std::chrono::milliseconds heartbeat_interval{1000};
  // While no rank has work, each waits this long for an admission before the ranks check again.
  std::chrono::milliseconds idle_wait{2};
  // Applies a new expert placement (loads the experts it adds, switches the exchanges to it).
  // Called between steps, on every rank at the same step. Unset: updates are refused.
  std::function<absl::Status(const v1::Placement&)> apply_placement;
};

// Runs until the coordinator says Shutdown (every rank stops at the same step: the stop is
// agreed by the same all-reduce that agrees on work) or something fails. `transport` is null
// for a world of one. OK after a Shutdown; the failure otherwise (the coordinator is gone, a
// collective failed), which the caller reports.
absl::Status ServeLoop(Engine& engine, Transport* transport, ControlClient& control, const ServeLoopOptions& options);

}  // namespace daedalus
