// Admission as tables of steps: requests submitted in order to workers of given KV capacities
// (64-token pages), where each goes or that it waits; tokens and ends coming back; a worker
// lost from an elastic world and what becomes of each of its sequences; expiry, cancellation
// and the end of everything. The workers are the registry's structs with recording links.
#include "coordinator/admission.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "tests/coordinator/fake_cluster.h"

namespace daedalus {
namespace {

// The admission's clock, as the server would pass it. Never a time to wait for: on a machine up
// for less than an hour it is still to come (a wait on it hung this test on fresh machines).
constexpr auto kNow = Clock::time_point{} + std::chrono::hours(1);

struct Request {
  int64_t prompt = 0, max_new = 0;
};

class AdmissionTest : public ::testing::Test {
 protected:
  void Workers(const std::vector<int64_t>& capacities, Admission::Options options = {}) {
    workers_.clear();
    links_.clear();
    for (size_t r = 0; r < capacities.size(); ++r) {
      Registry::Worker w;
      w.info.set_rank(static_cast<int>(r));
      w.info.set_kv_capacity_tokens(capacities[r]);
      w.info.set_kv_page_size(64);
      w.state = Registry::WorkerState::kReady;
      links_.push_back(std::make_shared<FakeLink>());
      w.link = links_.back();
      workers_.emplace_back(std::move(w));
    }
    admission_ = std::make_unique<Admission>(config_, options, nullptr, workers_);
  }
  std::shared_ptr<RequestChannel> Submit(const Request& r, Clock::time_point deadline = kNow + std::chrono::seconds(30)) {
    v1::GenerateRequest g;
    for (int64_t i = 0; i < r.prompt; ++i) g.add_prompt_ids(static_cast<int32_t>(5 + i % 100));
    g.set_max_new_tokens(static_cast<int32_t>(r.max_new));
    auto channel = admission_->Submit(g, deadline, kNow);
    EXPECT_TRUE(channel.ok()) << channel.status();
    admission_->AdmitWaiting();
    return channel.ok() ? *channel : nullptr;
  }
  static int RankOf(RequestChannel& c) {
    RequestChannel::News news;
    c.Take(Clock::time_point{}, news);  // at once: what has arrived
    return news.worker_rank;
  }
  static RequestChannel::News Drain(RequestChannel& c) {  // everything that arrived, at once
    RequestChannel::News news;
    c.Take(Clock::time_point{}, news);
    return news;
  }
  void Tokens(int rank, uint64_t sequence, std::vector<int32_t> ids, bool finished = false) {
    v1::StepEvents events;
    for (int32_t id : ids) {
      v1::TokenEvent* t = events.add_tokens();
      t->set_sequence(sequence);
      t->set_token_id(id);
    }
    if (finished) {
      v1::FinishEvent* f = events.add_finished();
      f->set_sequence(sequence);
      f->set_reason("length");
    }
    admission_->OnEvents(rank, events, kNow);
  }
  const v1::Admit* LastAdmit(int rank, uint64_t sequence) const {
    const v1::Admit* found = nullptr;
    for (const auto& m : links_[rank]->sent)
      if (m.has_admit() && m.admit().sequence() == sequence) found = &m.admit();
    return found;
  }

  ModelConfig config_ = *PresetConfig("tiny");
  std::vector<std::optional<Registry::Worker>> workers_;
  std::vector<std::shared_ptr<FakeLink>> links_;
  std::unique_ptr<Admission> admission_;
};

TEST_F(AdmissionTest, AdmitsInArrivalOrderWhereTheMostKvIsFree) {
  struct Case {
    std::string name;
    std::vector<int64_t> capacities;
    std::vector<Request> requests;
    std::vector<int> rank;  // where each went; -1: waits
  };
  const std::vector<Case> cases = {
      {"ties go to the lower rank, then the most free KV", {1024, 1024}, {{100, 28}, {100, 28}, {100, 28}}, {0, 1, 0}},
      {"the larger cache first", {512, 1024}, {{100, 28}, {600, 100}, {300, 50}}, {1, 1, 0}},
      // 960 tokens fit neither worker's 896 free: it waits, and the small one behind it too.
      {"the head waits, nothing overtakes it", {1024, 1024}, {{100, 28}, {100, 28}, {900, 60}, {10, 10}}, {0, 1, -1, -1}},
      {"a full worker takes nothing", {256}, {{200, 56}, {10, 10}}, {0, -1}},
  };
  for (const Case& c : cases) {
    Workers(c.capacities);
    for (size_t i = 0; i < c.requests.size(); ++i) {
      auto channel = Submit(c.requests[i]);
      ASSERT_NE(channel, nullptr);
      EXPECT_EQ(RankOf(*channel), c.rank[i]) << c.name << ", request " << i;
    }
    int64_t waiting = 0;
    for (int r : c.rank) waiting += r < 0;
    EXPECT_EQ(admission_->queued(), waiting) << c.name;
  }
}

TEST_F(AdmissionTest, RefusesWhatCannotBeQueued) {
  Workers({1024, 512}, Admission::Options{2, std::chrono::seconds(30), 8});
  v1::GenerateRequest huge;
  for (int i = 0; i < 1000; ++i) huge.add_prompt_ids(7);
  huge.set_max_new_tokens(100);  // 1,088 tokens, page-rounded: more than the largest cache
  auto refused = admission_->Submit(huge, kNow, kNow);
  ASSERT_TRUE(absl::IsResourceExhausted(refused.status()));
  EXPECT_TRUE(Admission::NeverFits(refused.status())) << "waiting cannot cure it: HTTP 400, not 429";
  EXPECT_NE(refused.status().message().find("needs 1152 KV cache tokens; the largest worker cache holds 1024"),
            std::string::npos)
      << refused.status();
  for (int i = 0; i < 2; ++i) Submit({900, 60});  // the first is admitted, the second waits
  Submit({900, 60});
  EXPECT_EQ(admission_->queued(), 2);
  auto over = admission_->Submit(huge, kNow, kNow);
  EXPECT_TRUE(absl::IsResourceExhausted(over.status()) && over.status().message().find("queue limit") != std::string::npos)
      << over.status();
  EXPECT_FALSE(Admission::NeverFits(over.status())) << "a full queue is a rate limit: retry later";
}

TEST_F(AdmissionTest, TheLongestSequenceIsTheLargestCacheInWholePages) {
  Workers({1000, 512});
  EXPECT_EQ(admission_->LongestSequence(), 960);  // 15 pages of 64
  v1::GenerateRequest g;
  for (int i = 0; i < 900; ++i) g.add_prompt_ids(7);
  g.set_max_new_tokens(60);
  EXPECT_TRUE(admission_->Fits(g).ok()) << "a sequence of LongestSequence() tokens fits";
  g.set_max_new_tokens(61);
  EXPECT_TRUE(Admission::NeverFits(admission_->Fits(g))) << "one more does not";
}

TEST_F(AdmissionTest, TokensAndEndsReachTheirChannelAndFreeTheReservation) {
  Workers({256});
  auto first = Submit({100, 28}), second = Submit({150, 50});  // 128 + 256 > 256: the second waits
  ASSERT_EQ(admission_->queued(), 1);
  EXPECT_EQ(workers_[0]->kv_reserved, 128);
  Tokens(0, 1, {11, 12});
  Tokens(1, 1, {99});  // another rank's event for this sequence: stale, ignored
  Tokens(0, 1, {13}, /*finished=*/true);
  const auto news = Drain(*first);
  ASSERT_EQ(news.tokens.size(), 3u);
  EXPECT_EQ(news.tokens[2].token_id(), 13);
  EXPECT_TRUE(news.finished && news.status.ok() && news.finish_reason == "length");
  EXPECT_EQ(workers_[0]->kv_reserved, 0);
  EXPECT_EQ(workers_[0]->running, 0);
  admission_->AdmitWaiting();  // room now
  EXPECT_EQ(RankOf(*second), 0);
  EXPECT_EQ(workers_[0]->kv_reserved, 256);
}

TEST_F(AdmissionTest, ALostWorkersSequencesContinueOrEndAsTheyMust) {
  struct Case {
    std::string name;
    Request request;
    std::vector<int32_t> streamed;  // before the loss
    std::string reason;             // "" and OK: requeued; else how it ends
    absl::StatusCode code = absl::StatusCode::kOk;
  };
  const int32_t eos = static_cast<int32_t>(*config_.eos_token_id);
  const std::vector<Case> cases = {
      {"half done: requeued, continuing after its tokens", {100, 28}, {7, 8, 9}, ""},
      {"its last token streamed, its end not", {100, 3}, {7, 8, 9}, "length"},
      {"it streamed the end of sequence", {100, 28}, {7, eos}, "stop"},
      {"no survivor's cache holds it", {700, 28}, {7}, "", absl::StatusCode::kUnavailable},
  };
  for (const Case& c : cases) {
    Workers({256, 1024, 512});
    auto first = Submit({100, 28});  // rank 1: the most free
    auto lost = Submit(c.request);   // rank 1 again
    ASSERT_EQ(RankOf(*first), 1) << c.name;
    ASSERT_EQ(RankOf(*lost), 1) << c.name;
    Tokens(1, 2, c.streamed);
    const int64_t requeued = admission_->Requeue(1, "worker rank 1 lost: test", kNow);
    const auto news = Drain(*lost);
    const bool continues = c.reason.empty() && c.code == absl::StatusCode::kOk;
    EXPECT_EQ(requeued, continues ? 2 : 1) << c.name;  // the first one continues in every case
    EXPECT_EQ(news.finished, !continues) << c.name;
    if (!continues) {
      EXPECT_EQ(news.finish_reason, c.reason) << c.name;
      EXPECT_EQ(news.status.code(), c.code) << c.name << ": " << news.status;
    }
    if (c.code == absl::StatusCode::kUnavailable) {
      EXPECT_NE(news.status.message().find("worker rank 1 lost: test; no surviving worker's KV cache holds its 768 tokens"),
                std::string::npos)
          << news.status;
    }
    // The registry removes the lost worker; the requeued go first, carrying what was streamed.
    workers_.erase(workers_.begin() + 1);
    links_.erase(links_.begin() + 1);
    admission_->AdmitWaiting();
    EXPECT_EQ(admission_->queued(), 0) << c.name;
    if (continues) {
      const v1::Admit* again = LastAdmit(1, 2);  // the most free survivor, rank 2 before
      ASSERT_NE(again, nullptr) << c.name;
      EXPECT_EQ(std::vector<int32_t>(again->generated_ids().begin(), again->generated_ids().end()), c.streamed) << c.name;
    }
  }
}

TEST_F(AdmissionTest, SequencesAboveALostRankFollowTheirWorker) {
  Workers({1024, 1024, 1024});
  auto on_0 = Submit({100, 28}), on_1 = Submit({100, 28}), on_2 = Submit({100, 28});
  ASSERT_EQ(RankOf(*on_2), 2);
  EXPECT_EQ(admission_->Requeue(1, "lost", kNow), 1);
  EXPECT_EQ(RankOf(*on_2), 1);
  EXPECT_EQ(RankOf(*on_0), 0);
  EXPECT_EQ(admission_->queued(), 1);
}

TEST_F(AdmissionTest, ExpiryCancellationAndTheEndOfEverything) {
  Workers({256});
  auto running = Submit({200, 50});
  auto late = Submit({10, 10}, kNow + std::chrono::seconds(1));
  auto patient = Submit({10, 10}, kNow + std::chrono::seconds(60));
  admission_->ExpireQueue(kNow + std::chrono::seconds(2));
  const auto expired = Drain(*late);
  EXPECT_TRUE(absl::IsResourceExhausted(expired.status)) << expired.status;
  EXPECT_NE(expired.status.message().find("not admitted within 2000 ms"), std::string::npos) << expired.status;
  EXPECT_EQ(admission_->queued(), 1);
  // Cancelling a queued request dequeues it; an admitted one is aborted on its worker.
  admission_->Cancel(3, "cancelled");
  EXPECT_TRUE(absl::IsCancelled(Drain(*patient).status));
  EXPECT_EQ(admission_->queued(), 0);
  admission_->Cancel(1, "stop");
  EXPECT_EQ(links_[0]->Count(v1::CoordinatorMessage::kAbort), 1);
  const auto stopped = Drain(*running);
  EXPECT_TRUE(stopped.finished && stopped.status.ok() && stopped.finish_reason == "stop");
  EXPECT_EQ(workers_[0]->kv_reserved, 0);
  // The end of everything: the lost rank's sequences with its reason, the others as degraded.
  Workers({256, 256});
  auto a = Submit({100, 28}), b = Submit({100, 28}), queued = Submit({250, 6});
  admission_->EndAll(1, absl::UnavailableError("rank 1 lost"), absl::UnavailableError("degraded"));
  EXPECT_EQ(Drain(*b).status.message(), "rank 1 lost");
  EXPECT_EQ(Drain(*a).status.message(), "degraded");
  EXPECT_EQ(Drain(*queued).status.message(), "degraded");
  EXPECT_EQ(admission_->held(), 0);
}

}  // namespace
}  // namespace daedalus
