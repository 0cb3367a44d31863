// The MPI transport, one rank per process. Run under
//   mpirun --allow-run-as-root --oversubscribe -np 3 mpi_transport_test
// (any -np from 1 up; alone it runs as a world of 1). Every payload word names its sender,
// destination, round and index, so a misrouted or stale word says where it came from.
// Rank 0 prints the usual GoogleTest output; other ranks print only their failures.
//
// The deadline test runs only with DAEDALUS_MPI_TEST_DEADLINE=1 (and is defined last): the last
// rank stays out of an all-to-all until every other rank has seen DeadlineExceeded naming it
// and told it so on MPI_COMM_WORLD. Then the late rank joins the same all-to-all (and checks
// what it receives) while the others DrainAfterDeadline, which completes their parked
// requests; then every rank reaches MPI_Finalize with nothing in flight, and exits cleanly.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "routing/mpi_transport.h"
#include "tests/routing/transport_checks.h"

namespace daedalus {
namespace {

using testing::Describe;
using testing::ExchangeAndCheck;
using testing::SizeFn;
using testing::Word;

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How many words `src` sends to `dst` in `round`: varied, sometimes zero, sometimes ~800 KB.
size_t Varied(int src, int dst, int round) {
  const int h = (src * 7 + dst * 13 + round * 5) % 11;
  if (h == 0) return 0;
  if (h == 1 || (src + dst + round) % 7 == 0) return 100000 + src;
  return h * 37 + dst;
}


// A fresh transport with a deadline generous enough for a loaded, oversubscribed machine.
std::unique_ptr<Transport> NewTransport(size_t max_message_bytes = kMpiMaxMessageBytes) {
  auto t = MakeMpiTransport(max_message_bytes);
  if (!t.ok()) {
    std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
    AbortMpi(1);
  }
  (*t)->set_deadline(milliseconds(20000));
  return std::move(*t);
}

TEST(MpiTransport, AllToAllDeliversEveryWordToItsDestination) {
  auto t = NewTransport();
  for (int round = 0; round < 6; ++round) ExchangeAndCheck(*t, round, Varied);
  ExchangeAndCheck(*t, 6, [](int, int, int) { return size_t{0}; });
  ExchangeAndCheck(*t, 7, [](int src, int dst, int) { return src == dst ? size_t{5} : size_t{0}; });
}

TEST(MpiTransport, EightMegabytesPerPeer) {
  auto t = NewTransport();
  ExchangeAndCheck(*t, 1, [](int, int, int) { return size_t{1} << 20; });
}

// Messages capped at 1000 bytes (not a multiple of a word): every payload goes in chunks.
TEST(MpiTransport, ChunkedPayloadsReassemble) {
  auto t = NewTransport(1000);
  ExchangeAndCheck(*t, 0, [](int src, int dst, int) { return size_t(3000 + 17 * src + dst); });
  ExchangeAndCheck(*t, 1, [](int src, int, int) { return size_t(src % 2 ? 125 : 0); });  // exactly one chunk
  std::vector<int64_t> v(300, t->rank() + 1);
  ASSERT_TRUE(t->AllReduceSum(v, "chunked").ok());
  for (int64_t x : v) EXPECT_EQ(x, int64_t(t->world_size()) * (t->world_size() + 1) / 2);
}

TEST(MpiTransport, AllReduceSumAddsOverRanks) {
  auto t = NewTransport();
  const int64_t world = t->world_size();
  for (int round = 0; round < 4; ++round) {
    std::vector<int64_t> v(round);  // from no values up
    for (size_t j = 0; j < v.size(); ++j) v[j] = (int64_t(t->rank()) + 1) * 1000 + j - (int64_t{1} << 40);
    absl::Status s = t->AllReduceSum(v, "reduce");
    ASSERT_TRUE(s.ok()) << s;
    for (size_t j = 0; j < v.size(); ++j) {
      EXPECT_EQ(v[j], world * (world + 1) / 2 * 1000 + world * (int64_t(j) - (int64_t{1} << 40)));
    }
  }
}

TEST(MpiTransport, BarrierWaitsForTheLastRank) {
  auto t = NewTransport();
  // Every rank starts its clock before the last one leaves "start", so before it sleeps.
  const auto start = Clock::now();
  ASSERT_TRUE(t->Barrier("start").ok());
  if (t->rank() == t->world_size() - 1) std::this_thread::sleep_for(milliseconds(100));
  ASSERT_TRUE(t->Barrier("b").ok());
  EXPECT_GE(Clock::now() - start, milliseconds(100)) << "rank " << t->rank();
}

// A slow rank (a different one each time) lags while the others run ahead into the next
// collectives: rounds of mixed kinds must never mix.
TEST(MpiTransport, ConsecutiveMixedCollectivesWithASlowRankDoNotMix) {
  auto t = NewTransport();
  const int world = t->world_size();
  for (int round = 0; round < 30; ++round) {
    if (round % 5 == 0 && t->rank() == (round / 5) % world) std::this_thread::sleep_for(milliseconds(3));
    if (round % 3 == 0) {
      ExchangeAndCheck(*t, round, [](int src, int dst, int r) { return size_t((src * 3 + dst + r) % 7 * 50); });
    } else if (round % 3 == 1) {
      std::vector<int64_t> v(1 + round % 4, round * 100 + t->rank());
      absl::Status s = t->AllReduceSum(v, absl::StrCat("round ", round));
      ASSERT_TRUE(s.ok()) << s;
      for (int64_t x : v) EXPECT_EQ(x, world * round * 100 + world * (world - 1) / 2) << "round " << round;
    } else {
      absl::Status s = t->Barrier(absl::StrCat("round ", round));
      ASSERT_TRUE(s.ok()) << s;
    }
  }
}

// The ranks named after "waiting for " in a deadline message, up to the " [pending: ...]" detail.
std::string WaitedFor(const absl::Status& s) {
  const std::string m(s.message());
  const size_t at = m.find("waiting for ");
  if (at == std::string::npos) return "<none in: " + m + ">";
  return m.substr(at + 12, m.find(" [", at) - at - 12);
}

constexpr int kTagExpired = 77;  // on MPI_COMM_WORLD: "I have seen my deadline expire"

// Defined last: it leaves the transport it uses unusable.
TEST(MpiTransportZZZ, DeadlineNamesTheRankThatNeverCame) {
  if (std::getenv("DAEDALUS_MPI_TEST_DEADLINE") == nullptr) {
    GTEST_SKIP() << "runs only with DAEDALUS_MPI_TEST_DEADLINE=1";
  }
  auto t = NewTransport();
  const int me = t->rank(), world = t->world_size(), late = world - 1;
  if (world < 2) GTEST_SKIP() << "needs at least 2 ranks";
  ASSERT_TRUE(t->Barrier("start").ok());
  if (me != late) {
    t->set_deadline(milliseconds(200));
    const auto start = Clock::now();
    std::vector<uint64_t> send;
    std::vector<size_t> send_bytes(world);
    for (int dst = 0; dst < world; ++dst) {
      for (size_t i = 0; i < Varied(me, dst, 0); ++i) send.push_back(Word(me, dst, 0, i));
      send_bytes[dst] = Varied(me, dst, 0) * sizeof(uint64_t);
    }
    std::vector<uint8_t> recv;
    std::vector<size_t> recv_bytes;
    absl::Status s = t->AllToAllV(send.data(), send_bytes, recv, recv_bytes, "round 0");
    const auto elapsed = Clock::now() - start;
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
    EXPECT_GE(elapsed, milliseconds(200));
    EXPECT_LT(elapsed, milliseconds(2000)) << "rank " << me;
    EXPECT_NE(s.message().find(absl::StrCat("rank ", me, ": AllToAllV (round 0) timed out after 200 ms")),
              std::string::npos)
        << s;
    EXPECT_EQ(WaitedFor(s), absl::StrCat("rank ", late)) << s;
    if (me == 0) std::printf("rank 0 got, as expected: %s\n", s.ToString().c_str());
    EXPECT_EQ(t->Barrier("after").code(), absl::StatusCode::kFailedPrecondition);
    MPI_Send(nullptr, 0, MPI_BYTE, late, kTagExpired, MPI_COMM_WORLD);
    absl::Status drained = DrainAfterDeadline(*t, milliseconds(20000));
    if (!drained.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", me, drained.ToString().c_str());
      AbortMpi(1);
    }
  } else {
    std::vector<MPI_Request> notes(late);
    for (int p = 0; p < late; ++p) MPI_Irecv(nullptr, 0, MPI_BYTE, p, kTagExpired, MPI_COMM_WORLD, &notes[p]);
    const auto give_up = Clock::now() + milliseconds(30000);
    for (int all = 0; !all; std::this_thread::sleep_for(milliseconds(1))) {
      MPI_Testall(late, notes.data(), &all, MPI_STATUSES_IGNORE);
      if (!all && Clock::now() > give_up) {
        std::fprintf(stderr, "rank %d: the other ranks never reported their deadline\n", me);
        AbortMpi(1);
      }
    }
    ExchangeAndCheck(*t, 0, Varied);  // late, but the same all-to-all: it completes
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// On ranks other than 0: print failures only, each with its rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                 r.line_number(), r.summary());
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace daedalus

int main(int argc, char** argv) {
  if (absl::Status s = daedalus::InitMpi(&argc, &argv); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new daedalus::RankFailurePrinter(rank));
  }
  const int rc = RUN_ALL_TESTS();
  daedalus::FinalizeMpi();
  return rc;
}
