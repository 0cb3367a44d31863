// The UCX transport with one UCP worker per thread in this process (UCX picks its wires:
// shared memory, TCP): payloads checked against their origin, sums, and a deadline that names
// the rank that never came.
#include "routing/ucx_transport.h"

#include <gtest/gtest.h>

#include <thread>

#include "tests/routing/transport_checks.h"

namespace daedalus {
namespace {

using std::chrono::milliseconds;
using testing::ExchangeAndCheck;
using testing::Word;

std::vector<std::unique_ptr<UcxTransport>> MakeWorld(int world) {
  std::vector<std::unique_ptr<UcxTransport>> ts;
  std::vector<std::string> addresses;
  for (int r = 0; r < world; ++r) {
    auto t = CreateUcxTransport();
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return {};
    addresses.push_back((*t)->address());
    ts.push_back(std::move(*t));
  }
  for (int r = 0; r < world; ++r) EXPECT_TRUE(ts[r]->Connect(r, addresses, 0).ok());
  return ts;
}

void RunWorld(std::vector<std::unique_ptr<UcxTransport>>& ts, const std::function<void(Transport&)>& body) {
  std::vector<std::thread> threads;
  for (auto& t : ts) {
    t->set_deadline(milliseconds(20000));
    threads.emplace_back([&body, &t] { body(*t); });
  }
  for (auto& th : threads) th.join();
}

size_t Varied(int src, int dst, int round) {
  const int h = (src * 7 + dst * 13 + round * 5) % 11;
  if (h == 0) return 0;
  if (h == 1 && round % 4 == 0) return 100000 + src;  // ~800 KB: UCX's rendezvous path
  return h * 37 + dst;
}

class UcxWorld : public ::testing::TestWithParam<int> {};

TEST_P(UcxWorld, AllToAllDeliversEveryWordAndSumsAgree) {
  auto ts = MakeWorld(GetParam());
  ASSERT_EQ(static_cast<int>(ts.size()), GetParam());
  RunWorld(ts, [](Transport& t) {
    for (int round = 0; round < 6; ++round) ExchangeAndCheck(t, round, Varied);
    ExchangeAndCheck(t, 6, [](int, int, int) { return size_t{0}; });
    std::vector<int64_t> v = {t.rank(), 1, -2 * t.rank()};
    ASSERT_TRUE(t.AllReduceSum(v, "sum").ok());
    const int64_t n = t.world_size(), ranks = n * (n - 1) / 2;
    EXPECT_EQ(v, (std::vector<int64_t>{ranks, n, -2 * ranks}));
    EXPECT_TRUE(t.Barrier("end").ok());
  });
}

INSTANTIATE_TEST_SUITE_P(Worlds, UcxWorld, ::testing::Values(1, 2, 3, 4));

TEST(UcxTransport, DeadlineNamesTheRankThatNeverCame) {
  auto ts = MakeWorld(3);
  ASSERT_EQ(ts.size(), 3u);
  RunWorld(ts, [](Transport& t) {
    if (t.rank() == 1) return;  // never enters
    t.set_deadline(milliseconds(300));
    std::vector<uint64_t> send(3, Word(t.rank(), 0, 0, 0));
    std::vector<size_t> send_bytes(3, sizeof(uint64_t));
    std::vector<uint8_t> recv;
    std::vector<size_t> recv_bytes;
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = t.AllToAllV(send.data(), send_bytes, recv, recv_bytes, "layer 3 dispatch");
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
    EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(2000));
    EXPECT_NE(s.message().find("(layer 3 dispatch) timed out after 300 ms waiting for rank 1"), std::string::npos) << s;
    // The transport is out of step now, and says so.
    EXPECT_EQ(t.Barrier("after").code(), absl::StatusCode::kFailedPrecondition);
  });
}

TEST(UcxTransport, ReformsAroundALostRankAndTakesInAJoiner) {
  // Rank 1 dies while 0 and 2 wait for it in an all-to-all: an interrupt from another thread
  // ends their wait at once; they re-form as a world of two on the endpoints they had, then
  // take in a new process as rank 2 of a third world. Payloads and sums are checked each time.
  auto ts = MakeWorld(3);
  ASSERT_EQ(ts.size(), 3u);
  const std::string a0 = ts[0]->address(), a2 = ts[2]->address();
  ts[1].reset();
  std::vector<UcxTransport*> survivors = {ts[0].get(), ts[2].get()};
  std::vector<std::thread> threads;
  for (UcxTransport* t : survivors) {
    threads.emplace_back([t] {
      t->set_deadline(milliseconds(20000));
      std::vector<int64_t> v = {1};
      const auto start = std::chrono::steady_clock::now();
      absl::Status s = t->AllReduceSum(v, "work check, step 9");
      EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
      EXPECT_NE(s.message().find("(work check, step 9) interrupted: the cluster re-forms"), std::string::npos) << s;
      EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(5000));
      // Still interrupted until it has re-formed.
      EXPECT_EQ(t->Barrier("before the reform").code(), absl::StatusCode::kFailedPrecondition);
    });
  }
  std::this_thread::sleep_for(milliseconds(200));
  for (UcxTransport* t : survivors) t->Interrupt(1);
  for (auto& th : threads) th.join();
  threads.clear();
  EXPECT_EQ(ts[0]->Reform(0, {a0, a2}, 0).code(), absl::StatusCode::kInvalidArgument);  // not a newer world
  EXPECT_EQ(ts[0]->Reform(1, {a0, a2}, 1).code(), absl::StatusCode::kInvalidArgument);  // another's address
  ASSERT_TRUE(ts[0]->Reform(0, {a0, a2}, 1).ok());
  ASSERT_TRUE(ts[2]->Reform(1, {a0, a2}, 1).ok());
  for (UcxTransport* t : survivors) {
    threads.emplace_back([t] {
      t->set_deadline(milliseconds(20000));
      EXPECT_EQ(t->world_size(), 2);
      for (int round = 0; round < 4; ++round) ExchangeAndCheck(*t, round, Varied);
    });
  }
  for (auto& th : threads) th.join();
  threads.clear();
  auto joiner = CreateUcxTransport();
  ASSERT_TRUE(joiner.ok()) << joiner.status();
  const std::vector<std::string> grown = {a0, a2, (*joiner)->address()};
  ASSERT_TRUE((*joiner)->Connect(2, grown, 2).ok());
  ASSERT_TRUE(ts[0]->Reform(0, grown, 2).ok());
  ASSERT_TRUE(ts[2]->Reform(1, grown, 2).ok());
  for (UcxTransport* t : {ts[0].get(), ts[2].get(), joiner->get()}) {
    threads.emplace_back([t] {
      t->set_deadline(milliseconds(20000));
      for (int round = 0; round < 4; ++round) ExchangeAndCheck(*t, round, Varied);
      std::vector<int64_t> v = {t->rank()};
      ASSERT_TRUE(t->AllReduceSum(v, "sum").ok());
      EXPECT_EQ(v[0], 3);
    });
  }
  for (auto& th : threads) th.join();
}

}  // namespace
}  // namespace daedalus
