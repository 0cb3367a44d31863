#include "routing/mpi_raw.h"

#define OMPI_SKIP_MPICXX 1
#include <mpi.h>

#include <climits>

#include "absl/strings/str_cat.h"

namespace daedalus {

absl::Status RawMpiAlltoallv(const void* send, const std::vector<size_t>& send_bytes, std::vector<uint8_t>& recv,
                             std::vector<size_t>& recv_bytes) {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  std::vector<int> scounts(world), rcounts(world), sdispl(world), rdispl(world);
  size_t offset = 0;
  for (int r = 0; r < world; ++r) {
    if (send_bytes[r] > static_cast<size_t>(INT_MAX) || offset > static_cast<size_t>(INT_MAX)) {
      return absl::InvalidArgumentError("RawMpiAlltoallv: more than 2 GB per call");
    }
    scounts[r] = static_cast<int>(send_bytes[r]);
    sdispl[r] = static_cast<int>(offset);
    offset += send_bytes[r];
  }
  if (int rc = MPI_Alltoall(scounts.data(), 1, MPI_INT, rcounts.data(), 1, MPI_INT, MPI_COMM_WORLD); rc != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat("MPI_Alltoall failed: ", rc));
  }
  size_t total = 0;
  recv_bytes.assign(world, 0);
  for (int r = 0; r < world; ++r) {
    if (rcounts[r] < 0 || total + rcounts[r] > static_cast<size_t>(INT_MAX)) {  // MPI's displacements are ints
      return absl::DataLossError(absl::StrCat("RawMpiAlltoallv: rank ", r, " announced ", rcounts[r],
                                              " bytes, past 2 GB per call in all"));
    }
    rdispl[r] = static_cast<int>(total);
    recv_bytes[r] = rcounts[r];
    total += rcounts[r];
  }
  recv.resize(total);
  if (int rc = MPI_Alltoallv(send, scounts.data(), sdispl.data(), MPI_BYTE, recv.data(), rcounts.data(), rdispl.data(),
                             MPI_BYTE, MPI_COMM_WORLD);
      rc != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat("MPI_Alltoallv failed: ", rc));
  }
  return absl::OkStatus();
}

}  // namespace daedalus
