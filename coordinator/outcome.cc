#include "coordinator/outcome.h"

#include "absl/strings/ascii.h"

namespace daedalus {

std::string OutcomeOf(const absl::Status& status, const std::string& finish_reason) {
  if (status.ok()) return finish_reason == "cancelled" ? "cancelled" : "ok";
  if (absl::IsCancelled(status)) return "cancelled";
  return absl::AsciiStrToLower(absl::StatusCodeToString(status.code()));
}

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace daedalus
