// The data plane between workers: a variable all-to-all, a small all-reduce and a barrier.
// Implementations: `local` (threads of one process, for tests), `mpi` (OpenMPI, under mpirun
// or srun). No other layer includes an MPI header.
//
// Every call is collective: all ranks of the world must make the same calls in the same order,
// with empty payloads when they have nothing to send. Every call has a deadline; on expiry it
// returns DeadlineExceeded naming the collective, the `what` it was given (layer, step) and the
// peers it was still waiting for. A transport is used by one thread of its rank at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace daedalus {

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Sends send_bytes[r] bytes to rank r, taken back to back from `send` (rank 0's first).
  // On return `recv` holds what every rank sent to this one, back to back by source rank,
  // and recv_bytes[r] how much came from rank r. Counts are exchanged inside. After a failure
  // the transport may still read `send` and write `recv` (a request it could not take back):
  // the caller keeps both alive and unused.
  virtual absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes, std::vector<uint8_t>& recv,
                                 std::vector<size_t>& recv_bytes, const std::string& what) = 0;
  // Element-wise sum over ranks of a few integers, in place.
  virtual absl::Status AllReduceSum(std::vector<int64_t>& values, const std::string& what) = 0;
  virtual absl::Status Barrier(const std::string& what) = 0;
  // Elastic transports (ucx): thread-safe, from any thread. The collective in progress, and any
  // later one, returns Aborted until the transport has been re-formed for a world numbered
  // `epoch` or later (UcxTransport::Reform). Others ignore it.
  virtual void Interrupt(int64_t epoch) { (void)epoch; }
  // Elastic transports: the world's epoch, and after a collective failed on a deadline or a
  // broken connection, the ranks it was still waiting for (what the rank reports as lost).
  virtual int64_t epoch() const { return 0; }
  virtual std::vector<int> waited_for() const { return {}; }

  std::chrono::milliseconds deadline() const { return deadline_; }
  void set_deadline(std::chrono::milliseconds d) { deadline_ = d; }

 private:
  std::chrono::milliseconds deadline_{60000};
};

// One Transport per rank, all connected, for `world_size` threads of this process.
std::vector<std::unique_ptr<Transport>> MakeLocalTransports(int world_size);

// The most bytes one AllToAllV takes in on a rank (64 GiB; DeepSeek-V3's largest, 4,096 tokens
// of combine rows, is ~1 GB).
constexpr uint64_t kMaxAllToAllBytes = uint64_t{1} << 36;
// DataLoss naming the peer where the byte counts announced by the peers (`counts[r]` from rank
// r) exceed kMaxAllToAllBytes, alone or summed: what a malformed peer sends, which would
// otherwise size (and overflow) the receive buffer.
absl::Status CheckIncomingCounts(const std::vector<uint64_t>& counts, int rank, const std::string& what);

}  // namespace daedalus
