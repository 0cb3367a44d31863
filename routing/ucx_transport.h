// The `ucx` transport: UCP tagged messages between worker processes started by any launcher
// (no MPI needed). This header includes no UCX header; only ucx_transport.cc does.
//
// Bootstrap in two steps, so that the addresses can travel through the coordinator (which
// may also hand out the ranks): CreateUcxTransport opens a UCP worker and exposes its address
// (opaque bytes); Connect takes this process's rank and every rank's address and opens the
// endpoints. Set UCX_TLS (e.g. tcp) to choose the wires, as with any UCX program.
//
// Collectives are built as in the MPI transport: byte counts first, then payloads, each
// message tagged with the collective's sequence number, the sender and the stage, polled
// against the deadline so that on expiry the error names the peers still missing. A peer whose
// connection fails is named at once. After an error the transport refuses further calls.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "routing/transport.h"

namespace daedalus {

class UcxTransport : public Transport {
 public:
  // This process's UCP worker address, to publish to the other ranks.
  virtual const std::string& address() const = 0;
  // Becomes `rank` of a world of addresses.size() and opens endpoints to every other rank's
  // address. Call once, before any collective; rank() and world_size() are valid after it.
  virtual absl::Status Connect(int rank, const std::vector<std::string>& addresses) = 0;
};

absl::StatusOr<std::unique_ptr<UcxTransport>> CreateUcxTransport();

}  // namespace daedalus
