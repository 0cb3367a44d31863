#include "routing/fault_injection.h"

#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace daedalus {
namespace {

class Stalling : public Transport {
 public:
  Stalling(std::unique_ptr<Transport> inner, int64_t at, std::chrono::milliseconds stall, bool alltoall_only)
      : inner_(std::move(inner)), at_(at), stall_(stall), alltoall_only_(alltoall_only) {}
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes, std::vector<uint8_t>& recv,
                         std::vector<size_t>& recv_bytes, const std::string& what) override {
    Tick(true);
    return inner_->AllToAllV(send, send_bytes, recv, recv_bytes, what);
  }
  absl::Status AllReduceSum(std::vector<int64_t>& values, const std::string& what) override {
    Tick(false);
    return inner_->AllReduceSum(values, what);
  }
  absl::Status Barrier(const std::string& what) override {
    Tick(false);
    return inner_->Barrier(what);
  }

 private:
  void Tick(bool alltoall) {
    if ((alltoall || !alltoall_only_) && calls_++ == at_) std::this_thread::sleep_for(stall_);
    inner_->set_deadline(deadline());
  }
  std::unique_ptr<Transport> inner_;
  int64_t at_, calls_ = 0;
  std::chrono::milliseconds stall_;
  bool alltoall_only_;
};

}  // namespace

std::unique_ptr<Transport> StallingTransport(std::unique_ptr<Transport> inner, int64_t stall_at_call,
                                             std::chrono::milliseconds stall, bool alltoall_only) {
  return std::make_unique<Stalling>(std::move(inner), stall_at_call, stall, alltoall_only);
}

absl::StatusOr<std::unique_ptr<Transport>> MaybeStall(std::unique_ptr<Transport> inner, const std::string& spec) {
  std::vector<std::string> parts = absl::StrSplit(spec, ':');
  int rank = 0;
  int64_t call = 0, ms = 0;
  if (parts.size() < 3 || parts.size() > 4 || !absl::SimpleAtoi(parts[0], &rank) || !absl::SimpleAtoi(parts[1], &call) ||
      !absl::SimpleAtoi(parts[2], &ms) || (parts.size() == 4 && parts[3] != "alltoall")) {
    return absl::InvalidArgumentError(
        absl::StrCat("DAEDALUS_FAULT_STALL=\"", spec, "\": expected RANK:CALL:MILLISECONDS[:alltoall]"));
  }
  if (rank != inner->rank()) return inner;
  auto stalling = StallingTransport(std::move(inner), call, std::chrono::milliseconds(ms), parts.size() == 4);
  return stalling;
}

}  // namespace daedalus
