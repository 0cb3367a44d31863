#include "routing/fault_injection.h"

#include <atomic>
#include <csignal>
#include <map>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace daedalus {
namespace {

std::atomic<bool> stall_requested{false};  // by SIGUSR2

void RequestStall(int) { stall_requested = true; }

class Stalling : public Transport {
 public:
  // Stalls at call `at` (-1: never), and at the next all-to-all after SIGUSR2 when `on_signal`.
  Stalling(std::unique_ptr<Transport> inner, int64_t at, std::chrono::milliseconds stall, bool alltoall_only,
           bool on_signal = false)
      : inner_(std::move(inner)), at_(at), stall_(stall), alltoall_only_(alltoall_only), on_signal_(on_signal) {}
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  void Interrupt(int64_t epoch) override { inner_->Interrupt(epoch); }
  int64_t epoch() const override { return inner_->epoch(); }
  std::vector<int> waited_for() const override { return inner_->waited_for(); }
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
    if (alltoall && on_signal_ && stall_requested.exchange(false)) std::this_thread::sleep_for(stall_);
    inner_->set_deadline(deadline());
  }
  std::unique_ptr<Transport> inner_;
  int64_t at_, calls_ = 0;
  std::chrono::milliseconds stall_;
  bool alltoall_only_, on_signal_;
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

absl::StatusOr<std::unique_ptr<Transport>> MaybeStallOnSignal(std::unique_ptr<Transport> inner, const std::string& ms) {
  int64_t stall = 0;
  if (!absl::SimpleAtoi(ms, &stall) || stall <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("DAEDALUS_FAULT_STALL_ON_SIGUSR2=\"", ms, "\": expected MILLISECONDS"));
  }
  std::signal(SIGUSR2, RequestStall);
  return std::unique_ptr<Transport>(
      std::make_unique<Stalling>(std::move(inner), -1, std::chrono::milliseconds(stall), true, /*on_signal=*/true));
}

namespace {

class DelayedReads final : public KvTransfer {
 public:
  DelayedReads(std::unique_ptr<KvTransfer> inner, std::chrono::milliseconds delay) : inner_(std::move(inner)), delay_(delay) {}
  const std::string& address() const override { return inner_->address(); }
  const std::string& pool_key() const override { return inner_->pool_key(); }
  uint64_t Read(const std::string& peer_address, const std::string& peer_key, std::vector<Range> ranges) override {
    waiting_.push_back({std::chrono::steady_clock::now() + delay_, peer_address, peer_key, std::move(ranges), next_});
    return next_++;
  }
  std::vector<Done> Poll() override {
    const auto now = std::chrono::steady_clock::now();
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (it->due > now) {
        ++it;
        continue;
      }
      started_[inner_->Read(it->peer, it->key, std::move(it->ranges))] = it->ticket;
      it = waiting_.erase(it);
    }
    std::vector<Done> done = inner_->Poll();
    for (Done& d : done) d.ticket = started_[d.ticket];
    return done;
  }

 private:
  struct Waiting {
    std::chrono::steady_clock::time_point due;
    std::string peer, key;
    std::vector<Range> ranges;
    uint64_t ticket;
  };
  std::unique_ptr<KvTransfer> inner_;
  const std::chrono::milliseconds delay_;
  std::vector<Waiting> waiting_;
  std::map<uint64_t, uint64_t> started_;  // the inner ticket → ours
  uint64_t next_ = 1;
};

}  // namespace

std::unique_ptr<KvTransfer> DelayedKvReads(std::unique_ptr<KvTransfer> inner, std::chrono::milliseconds delay) {
  return std::make_unique<DelayedReads>(std::move(inner), delay);
}

}  // namespace daedalus
