// The local transport, one thread per rank. Every payload word names its sender, destination,
// round and index, so a misrouted or stale word says where it came from.
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/routing/transport_checks.h"
#include "routing/transport.h"

namespace daedalus {
namespace {

using testing::Describe;
using testing::ExchangeAndCheck;
using testing::SizeFn;
using testing::Word;

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How many words `src` sends to `dst` in `round`: varied, sometimes zero, sometimes large.
size_t Varied(int src, int dst, int round) {
  const int h = (src * 7 + dst * 13 + round * 5) % 11;
  if (h == 0) return 0;
  if (h == 1 && round % 4 == 0) return 100000 + src;  // ~800 KB
  return h * 37 + dst;
}


// Runs body(transport) on one thread per rank. A broken transport fails within the deadline
// (generous, for a loaded machine) instead of hanging the test.
void RunWorld(std::vector<std::unique_ptr<Transport>>& ts, const std::function<void(Transport&)>& body) {
  std::vector<std::thread> threads;
  for (auto& t : ts) {
    t->set_deadline(milliseconds(10000));
    threads.emplace_back([&body, &t] { body(*t); });
  }
  for (auto& th : threads) th.join();
}
void RunWorld(int world, const std::function<void(Transport&)>& body) {
  auto ts = MakeLocalTransports(world);
  RunWorld(ts, body);
}

class LocalTransportWorld : public ::testing::TestWithParam<int> {};

TEST_P(LocalTransportWorld, AllToAllDeliversEveryWordToItsDestination) {
  RunWorld(GetParam(), [](Transport& t) {
    for (int round = 0; round < 6; ++round) ExchangeAndCheck(t, round, Varied);
    ExchangeAndCheck(t, 6, [](int, int, int) { return size_t{0}; });
    ExchangeAndCheck(t, 7, [](int src, int dst, int) { return src == dst ? size_t{5} : size_t{0}; });
  });
}

TEST_P(LocalTransportWorld, AllReduceSumAddsOverRanks) {
  const int world = GetParam();
  RunWorld(world, [world](Transport& t) {
    for (int round = 0; round < 4; ++round) {
      std::vector<int64_t> v(round + 1);
      for (size_t j = 0; j < v.size(); ++j) v[j] = (int64_t(t.rank()) + 1) * 1000 + j - (int64_t{1} << 40);
      absl::Status s = t.AllReduceSum(v, "reduce");
      ASSERT_TRUE(s.ok()) << s;
      for (size_t j = 0; j < v.size(); ++j) {
        EXPECT_EQ(v[j], int64_t(world) * (world + 1) / 2 * 1000 + int64_t(world) * (int64_t(j) - (int64_t{1} << 40)));
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Worlds, LocalTransportWorld, ::testing::Values(1, 2, 3, 5, 8));

// A slow rank (a different one each time) lags while the others run ahead into the next
// collectives: rounds of mixed kinds must never mix.
TEST(LocalTransport, ConsecutiveMixedCollectivesWithASlowRankDoNotMix) {
  const int world = 4;
  RunWorld(world, [](Transport& t) {
    for (int round = 0; round < 60; ++round) {
      if (round % 5 == 0 && t.rank() == (round / 5) % world) std::this_thread::sleep_for(milliseconds(3));
      switch (round % 3) {
        case 0: ExchangeAndCheck(t, round, Varied); break;
        case 1: {
          std::vector<int64_t> v(1 + round % 4, round * 100 + t.rank());
          absl::Status s = t.AllReduceSum(v, absl::StrCat("round ", round));
          ASSERT_TRUE(s.ok()) << s;
          for (int64_t x : v) EXPECT_EQ(x, 4 * round * 100 + 0 + 1 + 2 + 3) << "round " << round;
          break;
        }
        default: {
          absl::Status s = t.Barrier(absl::StrCat("round ", round));
          ASSERT_TRUE(s.ok()) << s;
        }
      }
    }
  });
}

TEST(LocalTransport, BarrierWaitsForTheLastRank) {
  RunWorld(3, [](Transport& t) {
    // Every rank starts its clock before the last one leaves "start", so before it sleeps.
    const auto start = Clock::now();
    ASSERT_TRUE(t.Barrier("start").ok());
    if (t.rank() == 2) std::this_thread::sleep_for(milliseconds(100));
    ASSERT_TRUE(t.Barrier("b").ok());
    EXPECT_GE(Clock::now() - start, milliseconds(100)) << "rank " << t.rank();
  });
}

// The ranks named after "waiting for " in a deadline message.
std::string WaitedFor(const absl::Status& s) {
  const std::string m(s.message());
  const size_t at = m.find("waiting for ");
  return at == std::string::npos ? "<none in: " + m + ">" : m.substr(at + 12);
}

// Ranks in `absent` never enter; the others must expire within the deadline plus slack and
// name exactly the absent ranks.
void ExpectDeadlineNames(int world, const std::vector<int>& absent, const std::string& named) {
  auto ts = MakeLocalTransports(world);
  RunWorld(ts, [&](Transport& t) {
    for (int a : absent) {
      if (t.rank() == a) return;
    }
    t.set_deadline(milliseconds(200));
    const auto start = Clock::now();
    std::vector<uint64_t> send(world, Word(t.rank(), 0, 0, 0));
    std::vector<size_t> send_bytes(world, sizeof(uint64_t));
    std::vector<uint8_t> recv;
    std::vector<size_t> recv_bytes;
    absl::Status s = t.AllToAllV(send.data(), send_bytes, recv, recv_bytes, "layer 3 dispatch");
    const auto elapsed = Clock::now() - start;
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
    EXPECT_GE(elapsed, milliseconds(190));
    EXPECT_LT(elapsed, milliseconds(1000));
    const std::string head = absl::StrCat("rank ", t.rank(), ": AllToAllV (layer 3 dispatch) timed out after 200 ms");
    EXPECT_NE(s.message().find(head), std::string::npos) << s;
    EXPECT_EQ(WaitedFor(s), named) << s;
  });
}

TEST(LocalTransport, DeadlineNamesTheRankThatNeverCame) { ExpectDeadlineNames(4, {2}, "rank 2"); }
TEST(LocalTransport, DeadlineNamesEveryRankThatNeverCame) { ExpectDeadlineNames(5, {1, 4}, "ranks 1, 4"); }

TEST(LocalTransport, MismatchedCollectivesAreReported) {
  RunWorld(2, [](Transport& t) {
    std::vector<int64_t> v{1};
    absl::Status s = t.rank() == 0 ? t.Barrier("b") : t.AllReduceSum(v, "r");
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
    EXPECT_NE(s.message().find("mismatched"), std::string::npos) << s;
  });
}

TEST(LocalTransport, WrongNumberOfSendCountsIsRejected) {
  auto ts = MakeLocalTransports(2);
  std::vector<uint8_t> recv;
  std::vector<size_t> recv_bytes;
  absl::Status s = ts[0]->AllToAllV(nullptr, {0, 0, 0}, recv, recv_bytes, "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

// What the ucx and mpi transports check a peer's announced byte counts with before they size
// the receive buffer: one count past the limit, or counts whose sum wraps 64 bits (a sum of 8
// had sized the buffer for 2^64 - 8 announced bytes).
TEST(AllToAllCounts, PastTheLimitOrWrappingIsDataLossNamingThePeer) {
  EXPECT_TRUE(CheckIncomingCounts({0, 4096, kMaxAllToAllBytes / 2}, 0, "x").ok());
  absl::Status s = CheckIncomingCounts({16, kMaxAllToAllBytes + 1, 0}, 0, "layer 3");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("rank 1 announced"), std::string::npos) << s;
  EXPECT_NE(s.message().find("layer 3"), std::string::npos) << s;
  s = CheckIncomingCounts({8, ~uint64_t{0} - 7}, 0, "x");  // sums to 0 in 64 bits
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  s = CheckIncomingCounts({kMaxAllToAllBytes / 2, kMaxAllToAllBytes / 2, kMaxAllToAllBytes / 2}, 1, "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("rank 2 announced"), std::string::npos) << s;
}

}  // namespace
}  // namespace daedalus
