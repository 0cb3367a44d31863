// A worker's life after registration: take admissions and aborts from the control stream,
// step the engine in lockstep with the other ranks, stream token events back, heartbeat.
#pragma once

#include <chrono>
#include <functional>

#include "absl/status/status.h"
#include "routing/kv_transfer.h"
#include "routing/transport.h"
#include "absl/status/statusor.h"
#include "worker/control_stream.h"
#include "worker/engine.h"

namespace daedalus {

struct ServeLoopOptions {
  std::chrono::milliseconds heartbeat_interval{1000};
  // While no rank has work, each waits this long for an admission before the ranks check again.
  std::chrono::milliseconds idle_wait{2};
  // Expert placement updates, in two halves so that no step waits for the checkpoint:
  //  - prepare(placement): starts reading the experts it adds, off the step loop; returns at
  //    once. Called when an update arrives and no earlier preparation is still running.
  //  - prepared(): whether that reading is done (an error ends the worker).
  //  - apply(): switches to the prepared placement (installs the experts, frees the ones no
  //    longer placed here). Called between steps, on every rank at the same step, once every
  //    rank has prepared the same version.
  // Unset: updates are refused.
  struct PlacementHooks {
    std::function<absl::Status(const v1::Placement&)> prepare;
    std::function<absl::StatusOr<bool>()> prepared;
    std::function<absl::Status()> apply;
  };
  PlacementHooks placement;
  // Elastic clusters (ucx): switches this rank to a re-formed world — transport, placement,
  // experts (see v1::Reform) — between steps; sequences and KV cache are kept and the step a
  // Reform cut short is computed again. A join's Reform cuts nothing short: it is applied at the
  // first step boundary at which every rank of the old world holds it. Unset: a Reform ends the
  // worker with an error.
  std::function<absl::Status(const v1::Reform&)> reform;
  // With `reform` set, how long a rank whose collective failed waits for the coordinator's
  // Reform (the peer it waited for may be lost) before it reports the failure and exits.
  std::chrono::milliseconds reform_wait{15000};
  // Prefill/decode disaggregation: how this worker reads a handed-off sequence's pages from its
  // prefill worker (Admit.kv_source), and how its own held pages are read. Unset: an Admit
  // with a kv_source is computed here from its tokens instead.
  KvTransfer* kv_transfer = nullptr;
};

// How a ServeLoop ended.
enum class ServeEnd {
  kShutdown,    // the coordinator said Shutdown: exit
  kReregister,  // the control stream ended without one (the coordinator restarted, the
                // connection broke) or Shutdown.reregister: abandon the sequences, register again
};

// Runs until the coordinator says Shutdown or the stream ends (or, elastic, re-forms the
// world around it as often as it says). Every rank leaves at the same
// step with the same ServeEnd: what each rank saw is agreed by the same all-reduce that agrees
// on work (Shutdown wins over re-registering). `transport` is null for a world of one. An error
// when something failed (a collective, the engine), which is also reported to the coordinator.
absl::StatusOr<ServeEnd> ServeLoop(Engine& engine, Transport* transport, ControlStream& control,
                                   const ServeLoopOptions& options);

}  // namespace daedalus
