// The local transport: `world_size` ranks as threads of one process, meeting in a shared hub.
//
// Rounds. Every rank numbers its own collective calls 0, 1, 2, ...; since all ranks make the
// same calls in the same order, call #s of every rank belongs to round s. The hub keeps one
// slot per round that some rank has entered and not every rank has left. A rank that runs
// ahead into round s+1 deposits into a fresh slot while a slow rank still collects from round
// s, so consecutive collectives never mix. A deposit is a copy, so a sender never waits for
// its receivers to collect: a rank waits only until every peer has deposited.
//
// After a DeadlineExceeded the world is out of step (the expired round's slot is never freed
// and the late rank, if it ever comes, completes that round alone); callers report and stop.
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "routing/transport.h"

namespace daedalus {
namespace {

using Clock = std::chrono::steady_clock;

enum class Kind { kAllToAllV, kAllReduceSum, kBarrier };

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kAllToAllV: return "AllToAllV";
    case Kind::kAllReduceSum: return "AllReduceSum";
    case Kind::kBarrier: return "Barrier";
  }
  return "?";
}

// What every rank brought to one round. Indexed by source rank, then destination rank.
struct Round {
  explicit Round(int world) : kind(world), what(world), arrived(world, false), slices(world), values(world) {}
  std::vector<Kind> kind;
  std::vector<std::string> what;
  std::vector<bool> arrived;
  int n_arrived = 0;
  int n_left = 0;
  std::vector<std::vector<std::vector<uint8_t>>> slices;  // [src][dst], AllToAllV
  std::vector<std::vector<int64_t>> values;               // [src], AllReduceSum
};

struct Hub {
  explicit Hub(int world) : world_size(world) {}
  const int world_size;
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, Round> rounds;  // by round number; entries are stable across inserts
};

std::string RankList(const std::vector<int>& ranks) {
  return absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(ranks, ", "));
}

class LocalTransport final : public Transport {
 public:
  LocalTransport(std::shared_ptr<Hub> hub, int rank) : hub_(std::move(hub)), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return hub_->world_size; }

  absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes, std::vector<uint8_t>& recv,
                         std::vector<size_t>& recv_bytes, const std::string& what) override {
    const int world = hub_->world_size;
    if (send_bytes.size() != static_cast<size_t>(world)) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", rank_, ": AllToAllV (", what, "): ", send_bytes.size(),
                                                     " send counts for a world of ", world));
    }
    std::vector<std::vector<uint8_t>> out(world);
    const uint8_t* p = static_cast<const uint8_t*>(send);
    for (int dst = 0; dst < world; ++dst) {
      out[dst].assign(p, p + send_bytes[dst]);
      p += send_bytes[dst];
    }
    std::vector<std::vector<uint8_t>> in(world);
    absl::Status s = Meet(
        Kind::kAllToAllV, what, [&](Round& r) { r.slices[rank_] = std::move(out); },
        [&](Round& r) {
          // Each [src][dst] slice is read by dst alone, so it can be moved out.
          for (int src = 0; src < world; ++src) in[src] = std::move(r.slices[src][rank_]);
          return absl::OkStatus();
        });
    if (!s.ok()) return s;
    size_t total = 0;
    recv_bytes.assign(world, 0);
    for (int src = 0; src < world; ++src) total += recv_bytes[src] = in[src].size();
    recv.resize(total);
    size_t offset = 0;
    for (int src = 0; src < world; ++src) {
      if (!in[src].empty()) std::memcpy(recv.data() + offset, in[src].data(), in[src].size());
      offset += in[src].size();
    }
    return absl::OkStatus();
  }

  absl::Status AllReduceSum(std::vector<int64_t>& values, const std::string& what) override {
    std::vector<int64_t> sum(values.size(), 0);
    return Meet(
        Kind::kAllReduceSum, what, [&](Round& r) { r.values[rank_] = values; },
        [&](Round& r) {
          for (int src = 0; src < hub_->world_size; ++src) {
            if (r.values[src].size() != values.size()) {
              return absl::InvalidArgumentError(absl::StrCat("rank ", rank_, ": AllReduceSum (", what, "): rank ", src,
                                                             " gave ", r.values[src].size(), " values, this rank ",
                                                             values.size()));
            }
            for (size_t i = 0; i < values.size(); ++i) sum[i] += r.values[src][i];
          }
          values = sum;
          return absl::OkStatus();
        });
  }

  absl::Status Barrier(const std::string& what) override {
    return Meet(
        Kind::kBarrier, what, [](Round&) {}, [](Round&) { return absl::OkStatus(); });
  }

 private:
  // Enters this rank's next round: deposits, waits for every peer to deposit, collects.
  absl::Status Meet(Kind kind, const std::string& what, const std::function<void(Round&)>& deposit,
                    const std::function<absl::Status(Round&)>& collect) {
    const auto limit = deadline();
    const Clock::time_point expiry = Clock::now() + limit;
    const uint64_t seq = next_seq_++;
    const int world = hub_->world_size;
    std::unique_lock<std::mutex> lock(hub_->mu);
    Round& r = hub_->rounds.try_emplace(seq, world).first->second;
    r.kind[rank_] = kind;
    r.what[rank_] = what;
    r.arrived[rank_] = true;
    deposit(r);
    if (++r.n_arrived == world) hub_->cv.notify_all();
    if (!hub_->cv.wait_until(lock, expiry, [&] { return r.n_arrived == world; })) {
      std::vector<int> missing;
      for (int p = 0; p < world; ++p) {
        if (!r.arrived[p]) missing.push_back(p);
      }
      return absl::DeadlineExceededError(absl::StrCat("rank ", rank_, ": ", KindName(kind), " (", what,
                                                      ") timed out after ", limit.count(), " ms waiting for ",
                                                      RankList(missing)));
    }
    absl::Status s = absl::OkStatus();
    for (int p = 0; p < world && s.ok(); ++p) {
      if (r.kind[p] != kind) {
        s = absl::InternalError(absl::StrCat("rank ", rank_, ": collective #", seq, " mismatched: this rank called ",
                                             KindName(kind), " (", what, "), rank ", p, " called ",
                                             KindName(r.kind[p]), " (", r.what[p], ")"));
      }
    }
    if (s.ok()) s = collect(r);
    if (++r.n_left == world) hub_->rounds.erase(seq);
    return s;
  }

  std::shared_ptr<Hub> hub_;
  const int rank_;
  uint64_t next_seq_ = 0;  // this rank's next round
};

}  // namespace

std::vector<std::unique_ptr<Transport>> MakeLocalTransports(int world_size) {
  auto hub = std::make_shared<Hub>(world_size);
  std::vector<std::unique_ptr<Transport>> transports;
  for (int r = 0; r < world_size; ++r) transports.push_back(std::make_unique<LocalTransport>(hub, r));
  return transports;
}

}  // namespace daedalus
