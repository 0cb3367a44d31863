// A plain blocking MPI_Alltoallv (counts by MPI_Alltoall first): the baseline `bench-a2a`
// measures the expert exchange against. No deadline; benchmarks only. Requires InitMpi.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace daedalus {

absl::Status RawMpiAlltoallv(const void* send, const std::vector<size_t>& send_bytes, std::vector<uint8_t>& recv,
                             std::vector<size_t>& recv_bytes);

}  // namespace daedalus
