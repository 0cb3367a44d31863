#include "routing/transport.h"

#include "absl/strings/str_cat.h"

namespace daedalus {

absl::Status CheckIncomingCounts(const std::vector<uint64_t>& counts, int rank, const std::string& what) {
  uint64_t total = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    if (counts[r] > kMaxAllToAllBytes || (total += counts[r]) > kMaxAllToAllBytes) {
      return absl::DataLossError(absl::StrCat("rank ", rank, ": all-to-all (", what, "): rank ", r, " announced ",
                                              counts[r], " bytes, past the ", kMaxAllToAllBytes,
                                              " one exchange may bring in"));
    }
  }
  return absl::OkStatus();
}

}  // namespace daedalus
