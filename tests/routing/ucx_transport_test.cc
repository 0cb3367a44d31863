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
  for (int r = 0; r < world; ++r) EXPECT_TRUE(ts[r]->Connect(r, addresses).ok());
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

}  // namespace
}  // namespace daedalus
