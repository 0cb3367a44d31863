// The NCCL transport: a one-rank world on one GPU (the all-to-all to itself, all-reduce,
// barrier), and, with two or more GPUs, one rank per GPU in threads of this process, every
// payload word naming its sender, receiver, round and index. Skipped without a GPU.
#include "routing/nccl_transport.h"

#include <cuda_runtime.h>

#include <thread>

#include "tests/kernels/cuda_test_util.h"
#include "tests/routing/transport_checks.h"

namespace daedalus {
namespace {

using namespace std::chrono_literals;

TEST(NcclTransport, SingleRankExchangesWithItself) {
  DAEDALUS_REQUIRE_GPU();
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  auto t = MakeNcclTransport(*id, 0, 1, 0, 30s);
  ASSERT_TRUE(t.ok()) << t.status();
  for (int round = 0; round < 3; ++round) {
    testing::ExchangeAndCheck(**t, round, [](int, int, int r) { return size_t(r * 1000); });  // 0 words first
  }
  std::vector<int64_t> v = {1, -2, 3};
  ASSERT_TRUE((*t)->AllReduceSum(v, "sum").ok());
  EXPECT_EQ(v, (std::vector<int64_t>{1, -2, 3}));
  EXPECT_TRUE((*t)->Barrier("barrier").ok());
}

TEST(NcclTransport, OneRankPerGpu) {
  DAEDALUS_REQUIRE_GPU();
  int gpus = 0;
  ASSERT_EQ(cudaGetDeviceCount(&gpus), cudaSuccess);
  if (gpus < 2) GTEST_SKIP() << "needs two GPUs; this machine has " << gpus;
  const int world = std::min(gpus, 4);
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok());
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank]() {
      auto t = MakeNcclTransport(*id, rank, world, rank, 60s);
      ASSERT_TRUE(t.ok()) << t.status();
      for (int round = 0; round < 4; ++round) {
        testing::ExchangeAndCheck(**t, round, [](int src, int dst, int r) { return size_t((src * 7 + dst * 3 + r) % 5 * 257); });
      }
      std::vector<int64_t> v = {rank, 1};
      ASSERT_TRUE((*t)->AllReduceSum(v, "sum").ok());
      EXPECT_EQ(v[0], world * (world - 1) / 2);
      EXPECT_EQ(v[1], world);
    });
  }
  for (auto& t : threads) t.join();
}

TEST(NcclTransport, RejectsAMalformedId) {
  auto t = MakeNcclTransport("short", 0, 1, 0, 1s);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace daedalus
