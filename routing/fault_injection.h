// A seam for tests: a Transport that behaves like the one it wraps until its Nth collective,
// where it first sleeps — a rank that stalls mid-run, as a hung GPU or a paused process would.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "routing/kv_transfer.h"
#include "routing/transport.h"

namespace daedalus {

// `alltoall_only`: count only AllToAllV calls, which happen inside forward steps (the stall
// then hits the N-th step with work, not an idle work check).
std::unique_ptr<Transport> StallingTransport(std::unique_ptr<Transport> inner, int64_t stall_at_call,
                                             std::chrono::milliseconds stall, bool alltoall_only = false);

// Parses "RANK:CALL:MILLISECONDS[:alltoall]" (the DAEDALUS_FAULT_STALL environment variable of
// the integration tests) and wraps `inner` if RANK is its rank; otherwise returns it unchanged.
absl::StatusOr<std::unique_ptr<Transport>> MaybeStall(std::unique_ptr<Transport> inner, const std::string& spec);

// DAEDALUS_FAULT_STALL_ON_SIGUSR2=MILLISECONDS: after SIGUSR2, the next all-to-all first sleeps
// that long (a rank that hangs mid-step while its heartbeats go on). Installs the handler.
absl::StatusOr<std::unique_ptr<Transport>> MaybeStallOnSignal(std::unique_ptr<Transport> inner, const std::string& ms);

// DAEDALUS_FAULT_KV_READ_DELAY_MS: every read of a handed-off sequence's pages starts `delay`
// late (the test then kills the prefill worker while the transfer is pending).
std::unique_ptr<KvTransfer> DelayedKvReads(std::unique_ptr<KvTransfer> inner, std::chrono::milliseconds delay);

}  // namespace daedalus
