// A worker's life after registration: take admissions and aborts from the control stream,
// step the engine in lockstep with the other ranks, stream token events back, heartbeat.
#pragma once

#include <chrono>
#include <functional>

#include "absl/status/status.h"
#include "routing/transport.h"
#include "absl/status/statusor.h"
#include "worker/control_stream.h"
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

// How a ServeLoop ended.
enum class ServeEnd {
  kShutdown,    // the coordinator said Shutdown: exit
  kReregister,  // the control stream ended without one (the coordinator restarted, the
                // connection broke) or Shutdown.reregister: abandon the sequences, register again
};

// Runs until the coordinator says Shutdown or the stream ends. Every rank leaves at the same
// step with the same ServeEnd: what each rank saw is agreed by the same all-reduce that agrees
// on work (Shutdown wins over re-registering). `transport` is null for a world of one. An error
// when something failed (a collective, the engine), which is also reported to the coordinator.
absl::StatusOr<ServeEnd> ServeLoop(Engine& engine, Transport* transport, ControlStream& control,
                                   const ServeLoopOptions& options);

}  // namespace daedalus
