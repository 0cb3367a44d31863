// The MPI transport: one rank per process, under mpirun or srun. This header includes no MPI
// header; only mpi_transport.cc does.
//
// Lifetime: call InitMpi once per process, before MakeMpiTransport, from the thread that will
// drive every transport (MPI_THREAD_FUNNELED: only that thread may call MPI), and FinalizeMpi
// once at the end, after every collective has completed. InitMpi and FinalizeMpi are idempotent.
//
// All three collectives are built from non-blocking point-to-point messages on a communicator
// of their own (a duplicate of MPI_COMM_WORLD), polled against the deadline, so that on expiry
// the error names the peers whose messages had not arrived. AllReduceSum and Barrier exchange
// with every peer (O(world^2) small messages), which is fine for expert-parallel worlds.
//
// After a DeadlineExceeded the world is out of step and MPI holds requests that may never
// complete: the transport keeps their buffers alive and refuses further calls
// (FailedPrecondition). The caller reports the error and calls AbortMpi; MPI_Finalize could
// hang. Tests in which the late rank does eventually join use DrainAfterDeadline instead.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"
#include "routing/transport.h"

namespace daedalus {

// True when this process was started by an MPI launcher (OMPI_COMM_WORLD_SIZE, PMI_SIZE or
// PMIX_RANK is set).
bool LaunchedByMpi();

// MPI_Init_thread with MPI_THREAD_FUNNELED; an error if the library cannot provide it or MPI
// was already finalized. argc and argv may be null.
absl::Status InitMpi(int* argc, char*** argv);
// MPI_Finalize, if MPI was initialized and not yet finalized.
void FinalizeMpi();
// MPI_Abort on MPI_COMM_WORLD (which ends every rank), or exit if MPI is not running.
[[noreturn]] void AbortMpi(int code);

// The largest single MPI message; larger payloads go in chunks (MPI counts are int).
inline constexpr size_t kMpiMaxMessageBytes = size_t{1} << 30;

// A transport over MPI_COMM_WORLD's ranks that pass the same `group` (all of them by default;
// several groups split one MPI job, e.g. prefill and decode workers launched together),
// numbered in their MPI_COMM_WORLD order. Collective: every rank calls it. Requires InitMpi.
// `max_message_bytes` (1 .. 2^31-1) is lowered only by tests of the chunking.
absl::StatusOr<std::unique_ptr<Transport>> MakeMpiTransport(size_t max_message_bytes = kMpiMaxMessageBytes, int group = 0);

// After `t` (an MPI transport) returned DeadlineExceeded: keeps driving the expired
// collective until its messages complete, which happens once the late peers join it, so that
// MPI_Finalize does not hang. Its results are discarded and `t` stays unusable.
// DeadlineExceeded if the messages are still pending after `limit`; OK if nothing expired.
absl::Status DrainAfterDeadline(Transport& t, std::chrono::milliseconds limit);

}  // namespace daedalus
