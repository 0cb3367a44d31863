// Prefill/decode disaggregation's KV transfer: a decode worker reads a sequence's latent cache
// pages straight out of the prefill worker's pool, one-sided (UCP RMA, ucp_get_nbx), into the
// pages it reserved for them. Reading rather than writing saves a hop: the decode worker knows
// where its pages are, and the prefill worker need not be told. Each side registers its whole
// pool once (ucp_mem_map) and publishes its UCP worker address and the pool's packed remote key
// at registration; the coordinator passes the prefill side's to the decode worker with the
// sequence. One thread per process owns the UCP worker and drives every transfer, so reads
// proceed while the engine steps (UCX may emulate RMA in software, which needs the serving side
// to progress too); idle, it sleeps until the network or a new read wakes it. This header
// includes no UCX header.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace daedalus {

class KvTransfer {
 public:
  virtual ~KvTransfer() = default;

  // To publish: this process's UCP worker address, and its pool's base address, length and
  // packed key (a reader refuses ranges past the length).
  virtual const std::string& address() const = 0;
  virtual const std::string& pool_key() const = 0;

  // One contiguous run of bytes: at offset `from` of the peer's pool, to offset `to` of this one's.
  struct Range {
    size_t from = 0, to = 0, bytes = 0;
  };
  // Starts reading `ranges` from the peer at `peer_address` whose pool is `peer_key`; returns
  // at once with the transfer's ticket.
  virtual uint64_t Read(const std::string& peer_address, const std::string& peer_key, std::vector<Range> ranges) = 0;
  struct Done {
    uint64_t ticket = 0;
    absl::Status status;  // why it failed: the peer unreachable or gone, or no answer in time
    size_t bytes = 0;
    double seconds = 0;   // from Read to completion
  };
  // The transfers finished since the previous call. A failed one wrote nothing more after it is
  // reported (its endpoint was closed and every read on it accounted for), so its pages may be
  // reused at once.
  virtual std::vector<Done> Poll() = 0;
};

// Registers `pool` (`bytes` long) and starts the transfer thread. A read still unfinished after
// `timeout` fails (its peer is taken for dead).
absl::StatusOr<std::unique_ptr<KvTransfer>> CreateUcxKvTransfer(void* pool, size_t bytes, std::chrono::milliseconds timeout);

}  // namespace daedalus
