// How a request ended, as a metrics label and a gRPC status code.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace daedalus {

// "ok" (stop or length), "cancelled", or the lower-case status code name
// ("invalid_argument", "resource_exhausted", "unavailable", ...).
std::string OutcomeOf(const absl::Status& status, const std::string& finish_reason);

// absl → gRPC at the RPC boundary; the codes are the same numbers.
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace daedalus
