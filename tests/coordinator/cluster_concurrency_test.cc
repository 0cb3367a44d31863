// ClusterState from many threads at once, as the gRPC server drives it: clients submitting,
// reading and cancelling; fake workers taking admissions and aborts and streaming tokens and
// heartbeats; the monitor checking deadlines; status readers; and a chaos thread that loses a
// worker and re-forms the cluster as a new launch. Meant for TSan (scripts/test.sh --sanitize
// thread); in a plain build it checks the end state: every request got exactly one answer of
// an allowed kind, and nothing stays reserved.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <random>
#include <thread>

#include "coordinator/cluster_state.h"

namespace daedalus {
namespace {

using Clock = ClusterState::Clock;
using std::chrono::milliseconds;

// The coordinator's end of a worker stream, read by a fake worker thread.
class QueueLink final : public WorkerLink {
 public:
  bool Send(const v1::CoordinatorMessage& m) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return false;
    queue_.push_back(m);
    cv_.notify_all();
    return true;
  }
  std::optional<v1::CoordinatorMessage> Next(milliseconds wait) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, wait, [&] { return !queue_.empty() || closed_; });
    if (queue_.empty()) return std::nullopt;
    v1::CoordinatorMessage m = std::move(queue_.front());
    queue_.pop_front();
    return m;
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    cv_.notify_all();
  }
  bool closed() {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::CoordinatorMessage> queue_;
  bool closed_ = false;
};

constexpr int kWorld = 3;

class Cluster {
 public:
  Cluster() {
    auto config = ModelConfig::Load(DAEDALUS_SOURCE_DIR "/cluster-configs/models/tiny/config.json");
    EXPECT_TRUE(config.ok()) << config.status();
    config_ = *config;
    CoordinatorOptions o;
    o.world_size = kWorld;
    o.max_queue = 64;
    o.heartbeat_timeout = milliseconds(60000);
    o.stall_timeout = milliseconds(60000);
    state_ = std::make_unique<ClusterState>(config_, "tiny", o, &metrics_);
  }
  ClusterState& state() { return *state_; }
  Metrics& metrics() { return metrics_; }

  // Registers and attaches a new launch; its fake workers run until the launch is replaced.
  void Launch(int n) {
    const std::string launch = "launch-" + std::to_string(n);
    std::vector<std::thread> registering;
    std::atomic<int64_t> generation{0};
    for (int r = 0; r < kWorld; ++r) {
      registering.emplace_back([&, r] {  // ranks register concurrently, as real ones do
        v1::RegisterRequest req;
        req.set_rank(r);
        req.set_world_size(kWorld);
        req.set_launch_id(launch);
        req.set_kv_capacity_tokens(1024);
        req.set_kv_page_size(64);
        auto g = state_->Register(req, Clock::now());
        ASSERT_TRUE(g.ok()) << g.status();
        ASSERT_EQ(g->rank, r);
        ASSERT_TRUE(state_->WaitAssignment(g->generation, r, Clock::now() + milliseconds(10000)).ok());
        generation = g->generation;
      });
    }
    for (auto& t : registering) t.join();
    std::lock_guard<std::mutex> lock(mu_);
    StopWorkersLocked();
    generation_ = generation;
    for (int r = 0; r < kWorld; ++r) {
      auto link = std::make_shared<QueueLink>();
      links_.push_back(link);
      ASSERT_TRUE(state_->Attach(r, generation, link, Clock::now()).ok());
      workers_.emplace_back([this, r, g = generation.load(), link] { Worker(r, g, *link); });
    }
  }
  void Lose(int rank) {
    int64_t g;
    {
      std::lock_guard<std::mutex> lock(mu_);
      g = generation_;
    }
    state_->Lose(rank, g, "chaos");
  }
  void Stop() {
    std::lock_guard<std::mutex> lock(mu_);
    StopWorkersLocked();
  }

 private:
  void StopWorkersLocked() {
    for (auto& l : links_) l->Close();
    for (auto& t : workers_) t.join();
    links_.clear();
    workers_.clear();
  }
  // A fake worker: each admitted sequence gets one token per "step" and finishes after a few.
  void Worker(int rank, int64_t generation, QueueLink& link) {
    std::mt19937 rng(static_cast<unsigned>(rank * 7919 + generation));
    std::map<uint64_t, int64_t> left;  // sequence → tokens still to send
    int64_t step = 0;
    while (!link.closed()) {
      for (auto m = link.Next(milliseconds(left.empty() ? 5 : 0)); m; m = link.Next(milliseconds(0))) {
        if (m->has_admit()) left[m->admit().sequence()] = std::min<int64_t>(m->admit().max_new_tokens(), 1 + rng() % 6);
        if (m->has_abort()) left.erase(m->abort().sequence());
        if (m->has_shutdown()) left.clear();
      }
      v1::StepEvents events;
      for (auto it = left.begin(); it != left.end();) {
        v1::TokenEvent* t = events.add_tokens();
        t->set_sequence(it->first);
        t->set_token_id(static_cast<int32_t>(rng() % 512));
        if (--it->second <= 0) {
          v1::FinishEvent* f = events.add_finished();
          f->set_sequence(it->first);
          f->set_reason(rng() % 8 == 0 ? "stop" : "length");
          it = left.erase(it);
        } else {
          ++it;
        }
      }
      ++step;
      if (events.tokens_size() > 0) state_->OnEvents(rank, generation, events, Clock::now());
      v1::Heartbeat hb;
      hb.set_step(step);
      hb.set_running(static_cast<int64_t>(left.size()));
      state_->OnHeartbeat(rank, generation, hb, Clock::now());
    }
  }

  ModelConfig config_;
  Metrics metrics_;
  std::unique_ptr<ClusterState> state_;
  std::mutex mu_;
  std::vector<std::shared_ptr<QueueLink>> links_;
  std::vector<std::thread> workers_;
  int64_t generation_ = 0;
};

TEST(ClusterConcurrency, ManyClientsFakeWorkersMonitorAndRelaunches) {
  Cluster cluster;
  cluster.Launch(1);
  std::atomic<bool> done{false};
  std::atomic<int64_t> submitted{0}, answered{0}, refused{0}, bad{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < 8; ++c) {  // clients
    threads.emplace_back([&, c] {
      std::mt19937 rng(c);
      while (!done) {
        v1::GenerateRequest r;
        for (int i = 0; i < 1 + static_cast<int>(rng() % 40); ++i) r.add_prompt_ids(static_cast<int32_t>(rng() % 512));
        r.set_max_new_tokens(1 + rng() % 30);
        r.set_logprobs(rng() % 3);
        const auto now = Clock::now();
        auto channel = cluster.state().Submit(r, now + milliseconds(rng() % 50), now);
        if (!channel.ok()) {
          ++refused;
          std::this_thread::sleep_for(milliseconds(1));  // as a client backing off
          const bool allowed = absl::IsUnavailable(channel.status()) || absl::IsResourceExhausted(channel.status());
          bad += !allowed;
          continue;
        }
        ++submitted;
        const bool cancel = rng() % 5 == 0;
        RequestChannel::News news;
        bool finished = false;
        for (int polls = 0; !finished && polls < 2000; ++polls) {
          finished = (*channel)->Take(Clock::now() + milliseconds(5), news);
          if (!finished && cancel && polls == 1) cluster.state().Cancel((*channel)->sequence());
        }
        if (!finished) {
          ++bad;  // never answered
          continue;
        }
        ++answered;
        const absl::Status& s = news.status;
        const bool allowed = s.ok() || absl::IsCancelled(s) || absl::IsUnavailable(s) || absl::IsResourceExhausted(s);
        bad += !allowed;
      }
    });
  }
  threads.emplace_back([&] {  // the server's monitor
    while (!done) {
      cluster.state().CheckDeadlines(Clock::now());
      std::this_thread::sleep_for(milliseconds(1));
    }
  });
  threads.emplace_back([&] {  // status readers (/metrics, ClusterStatus)
    while (!done) {
      (void)cluster.state().Status(Clock::now());
      (void)cluster.metrics().Render(cluster.state().Status(Clock::now()));
      std::this_thread::sleep_for(milliseconds(2));
    }
  });
  for (int round = 2; round <= 6; ++round) {  // chaos: lose a worker, then relaunch
    std::this_thread::sleep_for(milliseconds(300));
    cluster.Lose(round % kWorld);
    std::this_thread::sleep_for(milliseconds(50));
    cluster.Launch(round);
  }
  std::this_thread::sleep_for(milliseconds(300));
  done = true;
  for (auto& t : threads) t.join();
  cluster.Stop();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(answered.load(), submitted.load());
  EXPECT_GT(submitted.load(), 100);
  const v1::ClusterStatusResponse status = cluster.state().Status(Clock::now());
  EXPECT_EQ(status.queued(), 0);
  for (const auto& w : status.workers()) {
    EXPECT_EQ(w.kv_used_tokens(), 0) << "rank " << w.rank();
    EXPECT_EQ(w.running(), 0) << "rank " << w.rank();
  }
  int64_t counted = 0;
  for (const auto& [outcome, n] : cluster.metrics().requests_by_outcome()) counted += n;
  EXPECT_EQ(counted, submitted.load() + refused.load());
  std::printf("%lld requests answered, %lld refused, across 6 launches\n", static_cast<long long>(answered.load()),
              static_cast<long long>(refused.load()));
}

}  // namespace
}  // namespace daedalus
