// The worker's step loop under faults, in one process: two ranks (three where named) over the
// `local` transport, each with a fake control stream standing in for the coordinator. Faults
// come through the seams: a StallingTransport (a slow rank, a rank stalled past the collective
// deadline) and the ControlStream (dropped, or told to shut down or re-form). Each case states
// its bound.
#include "worker/serve_loop.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "core/message_queue.h"
#include "routing/expert_load.h"
#include "routing/fault_injection.h"
#include "tests/worker/test_models.h"

namespace daedalus {
namespace {

using testing::TinyModel;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

class FakeControl final : public ControlStream {
 public:
  bool Send(const v1::WorkerMessage& m) override {
    if (inbox_.closed()) return false;
    std::lock_guard<std::mutex> lock(mu_);
    sent_.push_back({Clock::now(), m});
    return true;
  }
  std::optional<v1::CoordinatorMessage> Next(milliseconds wait) override { return inbox_.Pop(wait); }
  bool closed() const override { return inbox_.closed(); }
  std::string close_reason() const override { return inbox_.close_reason(); }

  void Push(const v1::CoordinatorMessage& m) { inbox_.Push(m); }
  void Close() { inbox_.Close("the test dropped the control stream"); }
  std::vector<std::pair<Clock::time_point, v1::WorkerMessage>> Sent() const {
    std::lock_guard<std::mutex> lock(mu_);
    return sent_;
  }

 private:
  MessageQueue<v1::CoordinatorMessage> inbox_;
  mutable std::mutex mu_;
  std::vector<std::pair<Clock::time_point, v1::WorkerMessage>> sent_;
};

v1::CoordinatorMessage Admit(uint64_t sequence, std::vector<int32_t> prompt, int64_t max_new) {
  v1::CoordinatorMessage m;
  v1::Admit* a = m.mutable_admit();
  a->set_sequence(sequence);
  *a->mutable_prompt_ids() = {prompt.begin(), prompt.end()};
  a->set_max_new_tokens(max_new);
  a->set_top_p(1);
  a->set_ignore_eos(true);
  return m;
}

v1::CoordinatorMessage Shutdown(bool reregister) {
  v1::CoordinatorMessage m;
  m.mutable_shutdown()->set_reason("test");
  m.mutable_shutdown()->set_reregister(reregister);
  return m;
}

EngineOptions Options() {
  EngineOptions o;
  o.kv.dtype = DType::kF32;
  o.kv.page_size = 16;
  o.kv.max_tokens = 2048;
  return o;
}

// Two ranks serving in threads of this process.
// `world` ranks (2 unless named) over the local transport, each with its engine, control stream
// and loop thread.
class Ranks {
 public:
  // `stall`: wrap rank 1's transport to sleep `stall` at its `at`-th all-to-all (forward steps).
  Ranks(milliseconds deadline, milliseconds stall = milliseconds(0), int64_t at = 0,
        milliseconds heartbeat = milliseconds(1000), int world = 2)
      : world_(world), transports_(world), engines_(world), control_(world), options_(world), threads_(world),
        end_(world), ended_at_(world) {
    const ModelWeights& w = TinyModel(DType::kF32);
    const ModelConfig& c = w.config;
    placements_ = *PlaceLayers({}, c.num_hidden_layers, c.n_routed_experts, c.n_group, world, 0, 0);
    auto transports = MakeLocalTransports(world);
    if (stall.count() > 0) transports[1] = StallingTransport(std::move(transports[1]), at, stall, /*alltoall_only=*/true);
    for (int r = 0; r < world; ++r) {
      transports_[r] = std::move(transports[r]);
      transports_[r]->set_deadline(deadline);
      EngineOptions o = Options();
      o.transport = transports_[r].get();
      o.placements = &placements_;
      engines_[r] = std::make_unique<Engine>(w, o);
    }
    for (auto& o : options_) o.heartbeat_interval = heartbeat;
  }
  ~Ranks() { Join(); }

  int world() const { return world_; }
  FakeControl& control(int r) { return control_[r]; }
  ServeLoopOptions& options(int r) { return options_[r]; }  // before Start
  void Start() {
    for (int r = 0; r < world_; ++r) {
      threads_[r] = std::thread([this, r] {
        end_[r] = ServeLoop(*engines_[r], transports_[r].get(), control_[r], options_[r]);
        ended_at_[r] = Clock::now();
      });
    }
  }
  void Join() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  const absl::StatusOr<ServeEnd>& end(int r) const { return end_[r]; }
  Clock::time_point ended_at(int r) const { return ended_at_[r]; }

  // Tokens per sequence and the sequences finished, from every rank's events.
  std::map<uint64_t, std::vector<int32_t>> Tokens(int* finished = nullptr) const {
    std::map<uint64_t, std::vector<int32_t>> out;
    int done = 0;
    for (const auto& c : control_) {
      for (const auto& [at, m] : c.Sent()) {
        for (const auto& t : m.events().tokens()) out[t.sequence()].push_back(t.token_id());
        done += m.events().finished_size();
      }
    }
    if (finished) *finished = done;
    return out;
  }
  bool WaitFinished(int n, milliseconds limit) const {
    const auto until = Clock::now() + limit;
    int done = 0;
    while (Clock::now() < until) {
      Tokens(&done);
      if (done >= n) return true;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return false;
  }

 private:
  std::vector<Placement> placements_;
  int world_;
  std::vector<std::unique_ptr<Transport>> transports_;
  std::vector<std::unique_ptr<Engine>> engines_;
  std::vector<FakeControl> control_;
  std::vector<ServeLoopOptions> options_;
  std::vector<std::thread> threads_;
  std::vector<absl::StatusOr<ServeEnd>> end_;
  std::vector<Clock::time_point> ended_at_;
};

std::vector<int32_t> Prompt(int i) {
  std::vector<int32_t> p;
  for (int j = 0; j < 3 + 5 * i; ++j) p.push_back((i * 37 + j * 11) % 500);
  return p;
}

// The same prompts in one engine alone: what every placement must reproduce.
std::vector<std::vector<int32_t>> Reference(int n, int64_t max_new) {
  Engine engine(TinyModel(DType::kF32), Options());
  for (int i = 0; i < n; ++i) {
    Request r;
    r.prompt_ids = Prompt(i);
    r.max_new_tokens = max_new;
    r.stop_at_eos = false;
    EXPECT_TRUE(engine.Add(r).ok());
  }
  std::vector<std::vector<int32_t>> out;
  for (const Result& r : engine.RunToCompletion()) out.push_back(r.generated_ids);
  return out;
}

// Requests 100.. got one engine's tokens; then both ranks shut down cleanly.
void ExpectReferenceTokensThenShutDown(Ranks& ranks, int requests, int64_t max_new) {
  const auto tokens = ranks.Tokens();
  const auto expected = Reference(requests, max_new);
  for (int i = 0; i < requests; ++i) EXPECT_EQ(tokens.at(100 + i), expected[i]) << "request " << i;
  ranks.control(0).Push(Shutdown(false));
  ranks.Join();
  for (int r = 0; r < ranks.world(); ++r) EXPECT_TRUE(ranks.end(r).ok()) << ranks.end(r).status();
}

// A placement update whose experts take a while to read (rank 0: 600 ms, rank 1: 50 ms): steps
// go on meanwhile (no gap between token events near the read's length) and every rank switches
// in the same iteration once both have read. A newer version that arrives during the read is
// read next, and only it is applied. The tokens are unchanged.
TEST(ServeLoopPlacement, ExpertsAreReadOffTheStepLoopAndEveryRankSwitchesTogether) {
  constexpr int kRequests = 2;
  constexpr int64_t kNew = 200;
  Ranks ranks(milliseconds(10000));
  struct Rank {
    std::future<void> reading;  // this rank's loop thread only
    std::atomic<int> prepares{0}, applies{0};
    std::atomic<int64_t> applied_ns{0};
  };
  Rank state[2];
  auto ns = [] { return Clock::now().time_since_epoch().count(); };
  for (int r = 0; r < 2; ++r) {
    ServeLoopOptions& o = ranks.options(r);
    Rank& me = state[r];
    const milliseconds read_time(r == 0 ? 600 : 50);
    o.placement.prepare = [&me, read_time](const v1::Placement&) -> absl::Status {
      me.reading = std::async(std::launch::async, [read_time] { std::this_thread::sleep_for(read_time); });
      ++me.prepares;
      return absl::OkStatus();
    };
    o.placement.prepared = [&me]() -> absl::StatusOr<bool> {
      return me.reading.valid() && me.reading.wait_for(milliseconds(0)) == std::future_status::ready;
    };
    o.placement.apply = [&me, ns]() -> absl::Status {
      ++me.applies;
      me.applied_ns = ns();
      return absl::OkStatus();
    };
  }
  // The update first, then the requests: they decode while rank 0 reads.
  auto update = [](int64_t version) {
    v1::CoordinatorMessage m;
    m.mutable_placement_update()->set_version(version);
    return m;
  };
  const int64_t sent_ns = ns();
  for (int r = 0; r < 2; ++r) ranks.control(r).Push(update(1));
  for (int i = 0; i < kRequests; ++i) ranks.control(i % 2).Push(Admit(100 + i, Prompt(i), kNew));
  ranks.Start();
  std::this_thread::sleep_for(milliseconds(200));  // rank 0 is still reading version 1
  for (int r = 0; r < 2; ++r) ranks.control(r).Push(update(2));
  ASSERT_TRUE(ranks.WaitFinished(kRequests, milliseconds(60000)));
  const auto until = Clock::now() + milliseconds(10000);
  while (Clock::now() < until && (state[0].applies == 0 || state[1].applies == 0)) std::this_thread::sleep_for(milliseconds(10));
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(state[r].applies, 1) << r;
    EXPECT_EQ(state[r].prepares, 2) << r;  // version 1, then version 2
    // Version 2's read on rank 0 starts after version 1's (600 ms) and takes 600 ms.
    EXPECT_GE(state[r].applied_ns - sent_ns, std::chrono::nanoseconds(milliseconds(1200)).count()) << r;
  }
  EXPECT_LT(std::abs(state[0].applied_ns - state[1].applied_ns), std::chrono::nanoseconds(milliseconds(200)).count())
      << "the same agreed iteration";
  // Steps while rank 0 was reading: token events kept coming on its control stream.
  const Clock::time_point sent_at{Clock::duration(sent_ns)};
  Clock::time_point last = sent_at;
  milliseconds widest(0);
  int during = 0;
  for (const auto& [at, m] : ranks.control(0).Sent()) {
    if (m.events().tokens_size() == 0 || at < sent_at) continue;
    widest = std::max(widest, std::chrono::duration_cast<milliseconds>(at - last));
    last = at;
    ++during;
  }
  EXPECT_GT(during, 10) << "steps during the read";
  EXPECT_LT(widest, milliseconds(300)) << "a step waited for the read";
  ExpectReferenceTokensThenShutDown(ranks, kRequests, kNew);
}

// Three ranks told versions 1, 2 and 3 (whose sum is that of three 2s): none switches while
// they differ, and all switch together once every one holds version 3.
TEST(ServeLoopPlacement, RanksHoldingDifferentVersionsSwitchOnlyOnceAllHoldOne) {
  constexpr int kRequests = 3;
  constexpr int64_t kNew = 120;
  Ranks ranks(milliseconds(10000), milliseconds(0), 0, milliseconds(1000), /*world=*/3);
  std::atomic<int> applies[3] = {0, 0, 0};
  for (int r = 0; r < 3; ++r) {
    ServeLoopOptions& o = ranks.options(r);
    o.placement.prepare = [](const v1::Placement&) { return absl::OkStatus(); };
    o.placement.prepared = []() -> absl::StatusOr<bool> { return true; };
    o.placement.apply = [&applies, r]() -> absl::Status {
      ++applies[r];
      return absl::OkStatus();
    };
  }
  auto update = [](int64_t version) {
    v1::CoordinatorMessage m;
    m.mutable_placement_update()->set_version(version);
    return m;
  };
  for (int r = 0; r < 3; ++r) ranks.control(r).Push(update(r + 1));
  for (int i = 0; i < kRequests; ++i) ranks.control(i).Push(Admit(100 + i, Prompt(i), kNew));
  ranks.Start();
  std::this_thread::sleep_for(milliseconds(500));
  for (int r = 0; r < 3; ++r) EXPECT_EQ(applies[r], 0) << "rank " << r << " switched while the versions differed";
  for (int r = 0; r < 2; ++r) ranks.control(r).Push(update(3));
  const auto until = Clock::now() + milliseconds(10000);
  while (Clock::now() < until && (applies[0] == 0 || applies[1] == 0 || applies[2] == 0))
    std::this_thread::sleep_for(milliseconds(10));
  for (int r = 0; r < 3; ++r) EXPECT_EQ(applies[r], 1) << "rank " << r;
  ASSERT_TRUE(ranks.WaitFinished(kRequests, milliseconds(60000)));
  ExpectReferenceTokensThenShutDown(ranks, kRequests, kNew);
}

v1::CoordinatorMessage Reform(int64_t generation, bool join) {
  v1::CoordinatorMessage m;
  m.mutable_reform()->set_generation(generation);
  m.mutable_reform()->set_join(join);
  return m;
}

// A join's Reform reaches rank 0 300 ms before rank 1 while both decode: neither rank leaves
// the old world alone (rank 0 goes on stepping until rank 1 holds it too), both switch at one
// step boundary, and no step is cut short or lost (the tokens are one engine's). A loss's Reform
// is applied at once, by the rank that has it, without waiting for the other.
TEST(ServeLoopReform, AJoinSwitchesEveryRankAtOneAgreedStepBoundary) {
  constexpr int kRequests = 2;
  constexpr int64_t kNew = 1500;  // decoding well past both Reforms
  Ranks ranks(milliseconds(10000));
  std::atomic<int64_t> applied_ns[2] = {0, 0}, applied_generation[2] = {0, 0};
  auto ns = [] { return Clock::now().time_since_epoch().count(); };
  for (int r = 0; r < 2; ++r) {
    ranks.options(r).reform = [&, r](const v1::Reform& reform) -> absl::Status {
      applied_ns[r] = ns();
      applied_generation[r] = reform.generation();
      return absl::OkStatus();  // the same two ranks make the new world
    };
  }
  for (int i = 0; i < kRequests; ++i) ranks.control(i % 2).Push(Admit(100 + i, Prompt(i), kNew));
  ranks.Start();
  std::this_thread::sleep_for(milliseconds(100));
  const int64_t first_ns = ns();
  ranks.control(0).Push(Reform(2, /*join=*/true));
  std::this_thread::sleep_for(milliseconds(300));
  const int64_t second_ns = ns();
  EXPECT_EQ(applied_ns[0], 0) << "rank 0 left the old world before rank 1 held the join";
  ranks.control(1).Push(Reform(2, /*join=*/true));
  const auto until = Clock::now() + milliseconds(10000);
  while (Clock::now() < until && (applied_ns[0] == 0 || applied_ns[1] == 0)) std::this_thread::sleep_for(milliseconds(1));
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(applied_generation[r], 2) << r;
    EXPECT_GE(applied_ns[r], second_ns) << r;
  }
  EXPECT_LT(std::abs(applied_ns[0] - applied_ns[1]), std::chrono::nanoseconds(milliseconds(200)).count())
      << "the same agreed boundary";
  // Steps went on while only rank 0 held the join.
  int during = 0;
  for (const auto& [at, m] : ranks.control(0).Sent()) {
    const int64_t at_ns = at.time_since_epoch().count();
    if (m.events().tokens_size() > 0 && at_ns >= first_ns && at_ns < second_ns) ++during;
  }
  EXPECT_GT(during, 3) << "token events while only rank 0 held the join";
  // A loss: rank 1 alone gets it and applies it at once.
  ranks.control(1).Push(Reform(3, /*join=*/false));
  const auto loss_until = Clock::now() + milliseconds(5000);
  while (Clock::now() < loss_until && applied_generation[1] != 3) std::this_thread::sleep_for(milliseconds(1));
  EXPECT_EQ(applied_generation[1], 3) << "a loss's Reform waits for no agreement";
  EXPECT_EQ(applied_generation[0], 2);
  ASSERT_TRUE(ranks.WaitFinished(kRequests, milliseconds(60000)));
  ExpectReferenceTokensThenShutDown(ranks, kRequests, kNew);
}

// A slow rank that stays within the collective deadline only slows the cluster down: the
// tokens are those of one engine alone, and the loop goes on.
TEST(ServeLoopFaults, SlowRankWithinTheDeadlineChangesNothingButTime) {
  constexpr int kRequests = 4;
  constexpr int64_t kNew = 6;
  Ranks ranks(milliseconds(5000), milliseconds(400), /*at=*/3);
  for (int i = 0; i < kRequests; ++i) ranks.control(i % 2).Push(Admit(100 + i, Prompt(i), kNew));
  const auto start = Clock::now();
  ranks.Start();
  ASSERT_TRUE(ranks.WaitFinished(kRequests, milliseconds(60000)));
  EXPECT_GE(Clock::now() - start, milliseconds(400));  // the stall happened
  const auto tokens = ranks.Tokens();
  const auto expected = Reference(kRequests, kNew);
  for (int i = 0; i < kRequests; ++i) EXPECT_EQ(tokens.at(100 + i), expected[i]) << "request " << i;
  ranks.control(0).Push(Shutdown(false));
  ranks.Join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(ranks.end(r).ok()) << ranks.end(r).status();
    EXPECT_EQ(*ranks.end(r), ServeEnd::kShutdown);
  }
}

// A rank stalled mid-step keeps heartbeating with a frozen step count, as do its peers waiting
// for it: the signal the coordinator's --stall-timeout acts on. Heartbeats every 100 ms; a
// 2 s stall must show at least 10 heartbeats per rank with the same step while work is pending.
TEST(ServeLoopFaults, StalledRankKeepsHeartbeatingWithAFrozenStepCount) {
  Ranks ranks(milliseconds(10000), milliseconds(2000), /*at=*/1, /*heartbeat=*/milliseconds(100));
  ranks.control(0).Push(Admit(1, Prompt(1), 4));
  ranks.Start();
  ASSERT_TRUE(ranks.WaitFinished(1, milliseconds(60000)));
  for (int r = 0; r < 2; ++r) {
    int longest = 0, run = 0;
    int64_t step = -1;
    for (const auto& [at, m] : ranks.control(r).Sent()) {
      if (!m.has_heartbeat()) continue;
      const bool frozen = m.heartbeat().step() == step && (r == 1 || m.heartbeat().running() > 0);
      run = frozen ? run + 1 : 0;
      longest = std::max(longest, run);
      step = m.heartbeat().step();
    }
    EXPECT_GE(longest, 10) << "rank " << r;
  }
  ranks.control(1).Push(Shutdown(false));
  ranks.Join();
  EXPECT_EQ(*ranks.end(0), ServeEnd::kShutdown);
}

// A rank stalled longer than the collective deadline: its peer gives up within the deadline
// (500 ms) plus one step, names it, and reports the failure on its control stream.
TEST(ServeLoopFaults, RankStalledPastTheDeadlineIsNamedByItsPeerWithinTheDeadline) {
  Ranks ranks(milliseconds(500), milliseconds(3000), /*at=*/1);
  ranks.control(0).Push(Admit(1, Prompt(2), 8));
  const auto start = Clock::now();
  ranks.Start();
  ranks.Join();
  ASSERT_FALSE(ranks.end(0).ok());
  const absl::Status& s = ranks.end(0).status();
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_NE(s.message().find("waiting for rank 1"), std::string::npos) << s;
  const auto detected = std::chrono::duration_cast<milliseconds>(ranks.ended_at(0) - start);
  EXPECT_LT(detected.count(), 500 + 1500) << "rank 0 noticed after " << detected.count() << " ms";
  std::printf("rank 0 named the stalled rank after %lld ms (deadline 500 ms)\n", static_cast<long long>(detected.count()));
  bool reported = false;
  for (const auto& [at, m] : ranks.control(0).Sent()) reported |= m.has_failure() && m.failure().message() == s.message();
  EXPECT_TRUE(reported);
  EXPECT_FALSE(ranks.end(1).ok());  // the stalled rank finds its peer gone
}

// A dropped control stream on one rank: every rank leaves at the same step to register again
// (bound: one idle wait plus one step, well under a second), abandoning the running sequence,
// and no failure is reported.
TEST(ServeLoopFaults, DroppedControlStreamMakesEveryRankRegisterAgain) {
  Ranks ranks(milliseconds(5000));
  ranks.control(0).Push(Admit(1, Prompt(1), 2000));  // runs until dropped
  ranks.Start();
  const auto until = Clock::now() + milliseconds(30000);
  while (ranks.Tokens().empty() && Clock::now() < until) std::this_thread::sleep_for(milliseconds(5));
  const auto dropped = Clock::now();
  ranks.control(1).Close();
  ranks.Join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(ranks.end(r).ok()) << ranks.end(r).status();
    EXPECT_EQ(*ranks.end(r), ServeEnd::kReregister);
    const auto took = std::chrono::duration_cast<milliseconds>(ranks.ended_at(r) - dropped);
    EXPECT_LT(took.count(), 1000) << "rank " << r;
    for (const auto& [at, m] : ranks.control(r).Sent()) EXPECT_FALSE(m.has_failure());
  }
}

TEST(ServeLoopFaults, ShutdownWinsOverRegisteringAgain) {
  Ranks ranks(milliseconds(5000));
  ranks.control(0).Push(Shutdown(false));
  ranks.control(1).Close();
  ranks.Start();
  ranks.Join();
  for (int r = 0; r < 2; ++r) EXPECT_EQ(*ranks.end(r), ServeEnd::kShutdown) << "rank " << r;
}

TEST(ServeLoopFaults, ShutdownWithReregisterReformsEveryRank) {
  Ranks ranks(milliseconds(5000));
  ranks.Start();
  ranks.control(1).Push(Shutdown(true));
  ranks.Join();
  for (int r = 0; r < 2; ++r) EXPECT_EQ(*ranks.end(r), ServeEnd::kReregister) << "rank " << r;
}

TEST(ServeLoopFaults, WorldOfOneRegistersAgainWhenItsStreamDrops) {
  Engine engine(TinyModel(DType::kF32), Options());
  FakeControl control;
  control.Push(Admit(1, Prompt(0), 3));
  std::thread dropper([&] {
    std::this_thread::sleep_for(milliseconds(300));
    control.Close();
  });
  auto end = ServeLoop(engine, nullptr, control, ServeLoopOptions{});
  dropper.join();
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(*end, ServeEnd::kReregister);
}

}  // namespace
}  // namespace daedalus
