// The `ucx` transport: UCP tagged messages between worker processes started by any launcher
// (no MPI needed). This header includes no UCX header; only ucx_transport.cc does.
//
// Bootstrap in two steps, so that the addresses can travel through the coordinator (which
// may also hand out the ranks): CreateUcxTransport opens a UCP worker and exposes its address
// (opaque bytes); Connect takes this process's rank and every rank's address and opens the
// endpoints. UCX picks the wires, but not its shared-memory FIFOs (routing/ucp_worker.h): ranks
// of one host talk over TCP loopback and cma. Set UCX_TLS to choose them, as with any UCX program.
//
// Collectives are built as in the MPI transport: byte counts first, then payloads, each
// message tagged with the world's epoch, the collective's sequence number, the sender and the stage, polled
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
  // Becomes `rank` of a world of addresses.size(), numbered `epoch` (0 for a new cluster; a
  // worker joining a running one takes the world's), and opens endpoints to every other rank's
  // address. Call once, before any collective; rank() and world_size() are valid after it.
  virtual absl::Status Connect(int rank, const std::vector<std::string>& addresses, int64_t epoch) = 0;
  // The world changed shape (a peer lost, one joined): becomes `rank` of a world of
  // addresses.size(), numbered `epoch` (increasing). Endpoints to addresses it already knows
  // are kept (healthy pairs are not reconnected), new ones opened, those gone closed. Messages
  // left over from earlier worlds never match this one's (the epoch is in every tag), and an
  // earlier failure or Interrupt below `epoch` is forgotten.
  virtual absl::Status Reform(int rank, const std::vector<std::string>& addresses, int64_t epoch) = 0;
};

absl::StatusOr<std::unique_ptr<UcxTransport>> CreateUcxTransport();

}  // namespace daedalus
