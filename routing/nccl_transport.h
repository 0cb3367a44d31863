// The NCCL transport: the data plane between GPU workers. This header includes no NCCL or
// CUDA header; only nccl_transport.cc does. Built where CUDA and NCCL are found.
//
// The Transport interface moves host bytes; this transport stages them through device memory
// on its own stream (GPU-resident callers avoid the copies in a later revision). AllToAllV
// first exchanges the byte counts (an ncclAllGather of each rank's counts), then moves the
// payload with grouped ncclSend/ncclRecv; AllReduceSum and Barrier are ncclAllReduce calls.
//
// The communicator is non-blocking (ncclConfig_t::blocking = 0): every call is polled against
// the transport's deadline, and on expiry the communicator is aborted (ncclCommAbort) and the
// error names the collective, the caller's `what`, and the peers this rank was exchanging with
// (NCCL does not say which of them is late). The transport is then unusable.
//
// Bootstrap: one rank draws a unique id (NewNcclUniqueId) and every rank gets the same bytes
// before MakeNcclTransport: handed out by the coordinator, or sent over another transport
// under mpirun (MakeNcclTransportOver). No shared file system is involved.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "routing/transport.h"

namespace daedalus {

// A fresh ncclUniqueId as its bytes (NCCL_UNIQUE_ID_BYTES, 128).
absl::StatusOr<std::string> NewNcclUniqueId();

// Rank `rank` of `world` on CUDA device `device`, joining the communicator of `unique_id`.
// Collective over the world; fails with DeadlineExceeded if the others do not join within
// `init_deadline`.
absl::StatusOr<std::unique_ptr<Transport>> MakeNcclTransport(const std::string& unique_id, int rank, int world,
                                                             int device, std::chrono::milliseconds init_deadline);

// Under mpirun: rank 0 draws the id and sends it to every rank over `bootstrap` (an MPI
// transport), then all join. Ranks and world size are bootstrap's.
absl::StatusOr<std::unique_ptr<Transport>> MakeNcclTransportOver(Transport& bootstrap, int device);

}  // namespace daedalus
