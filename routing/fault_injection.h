// A seam for tests: a Transport that behaves like the one it wraps until its Nth collective,
// where it first sleeps — a rank that stalls mid-run, as a hung GPU or a paused process would.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "routing/transport.h"

namespace daedalus {

std::unique_ptr<Transport> StallingTransport(std::unique_ptr<Transport> inner, int64_t stall_at_call,
                                             std::chrono::milliseconds stall);

// Parses "RANK:CALL:MILLISECONDS" (the DAEDALUS_FAULT_STALL environment variable of the
// integration tests) and wraps `inner` if RANK is its rank; otherwise returns it unchanged.
absl::StatusOr<std::unique_ptr<Transport>> MaybeStall(std::unique_ptr<Transport> inner, const std::string& spec);

}  // namespace daedalus
