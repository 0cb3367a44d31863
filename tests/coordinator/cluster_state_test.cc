// The coordinator's bookkeeping driven by fake workers: formation, attention sharding,
// admission, deadlines, cancellation and lost workers, as tables of expected state.
#include "coordinator/cluster_state.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

#include "coordinator/validate.h"
#include "tests/coordinator/fake_cluster.h"
#include "worker/presets.h"

namespace daedalus {
namespace {

TEST_F(ClusterStateTest, FormsOnceEveryRankRegistersAndAttaches) {
  config_ = *PresetConfig("tiny");
  CoordinatorOptions options;
  options.world_size = 2;
  state_ = std::make_unique<ClusterState>(config_, "tiny", options, &metrics_);
  EXPECT_EQ(state_->state(), "forming");
  ASSERT_TRUE(Register(0, 1024, "a").ok());
  // Not yet formed: the assignment waits for rank 1.
  EXPECT_TRUE(absl::IsUnavailable(state_->WaitAssignment(generation_, 0, Clock::now()).status()));
  ASSERT_TRUE(Register(1, 1024, "a").ok());
  auto assignment = state_->WaitAssignment(generation_, 0, Clock::now());
  ASSERT_TRUE(assignment.ok()) << assignment.status();
  // Every routed expert of every MoE layer is placed on exactly one of the two ranks.
  ASSERT_EQ(assignment->placement().layers_size(), config_.num_hidden_layers);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    if (!config_.is_moe_layer(l)) continue;
    std::vector<int> seen(config_.n_routed_experts, 0);
    for (const auto& on : assignment->placement().layers(l).experts_on())
      for (int e : on.experts()) ++seen[e];
    for (int e = 0; e < config_.n_routed_experts; ++e) EXPECT_EQ(seen[e], 1) << "layer " << l << " expert " << e;
  }
  EXPECT_TRUE(absl::IsUnavailable(state_->Submit(Request(4, 4), now_, now_).status()));
  auto link0 = std::make_shared<FakeLink>(), link1 = std::make_shared<FakeLink>();
  ASSERT_TRUE(state_->Attach(0, generation_, link0, now_).ok());
  EXPECT_EQ(state_->state(), "forming");
  ASSERT_TRUE(state_->Attach(1, generation_, link1, now_).ok());
  EXPECT_EQ(state_->state(), "serving");
  EXPECT_TRUE(absl::IsAlreadyExists(state_->Attach(1, generation_, link1, now_)));
}

TEST_F(ClusterStateTest, RejectsMismatchedRegistrations) {
  Form({1024, 1024});
  v1::RegisterRequest r;
  r.set_rank(0);
  r.set_world_size(3);
  r.set_launch_id("launch-1");
  r.set_kv_capacity_tokens(64);
  r.set_kv_page_size(64);
  EXPECT_TRUE(absl::IsFailedPrecondition(state_->Register(r, now_).status()));
  r.set_world_size(2);
  EXPECT_TRUE(absl::IsAlreadyExists(state_->Register(r, now_).status()));  // rank 0 of launch-1 is there
  r.set_rank(2);
  EXPECT_TRUE(absl::IsInvalidArgument(state_->Register(r, now_).status()));
}

TEST_F(ClusterStateTest, RefusesAWorkerWhoseCacheFormatIsNotTheClusters) {
  config_ = *PresetConfig("tiny");
  CoordinatorOptions options;
  options.world_size = world_ = 1;
  options.kv_dtype = "fp8";
  state_ = std::make_unique<ClusterState>(config_, "tiny", options, &metrics_);
  auto bf16 = RegisterFull(0, 1024, "launch-1");  // an unset kv_dtype is bf16
  ASSERT_TRUE(absl::IsFailedPrecondition(bf16.status())) << bf16.status();
  EXPECT_NE(bf16.status().message().find("--kv-dtype bf16"), std::string::npos) << bf16.status();
  EXPECT_NE(bf16.status().message().find("--kv-dtype fp8"), std::string::npos) << bf16.status();
  v1::RegisterRequest r;
  r.set_rank(0);
  r.set_world_size(1);
  r.set_launch_id("launch-1");
  r.set_kv_capacity_tokens(1024);
  r.set_kv_page_size(64);
  r.set_kv_dtype("fp8");
  ASSERT_TRUE(state_->Register(r, now_).ok());
  EXPECT_EQ(state_->Status(now_).workers(0).kv_dtype(), "fp8");
}

TEST_F(ClusterStateTest, WorkersWithoutLaunchIdOrRankGetRanksInOrder) {
  config_ = *PresetConfig("tiny");
  CoordinatorOptions options;
  options.world_size = world_ = 3;
  state_ = std::make_unique<ClusterState>(config_, "tiny", options, &metrics_);
  // Rank 1 asked for explicitly, the others assigned: the lowest free ranks.
  auto a = RegisterFull(-1, 1024, "");
  auto b = RegisterFull(1, 1024, "");
  auto c = RegisterFull(-1, 1024, "");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->rank, 0);
  EXPECT_EQ(b->rank, 1);
  EXPECT_EQ(c->rank, 2);
  EXPECT_EQ(a->generation, c->generation);
  auto assignment = state_->WaitAssignment(a->generation, 2, Clock::now());
  ASSERT_TRUE(assignment.ok());
  EXPECT_EQ(assignment->rank(), 2);
  EXPECT_EQ(assignment->world_size(), 3);
  // Once formed, another anonymous worker starts the next generation (a relaunch).
  auto d = RegisterFull(-1, 1024, "");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->generation, a->generation + 1);
  EXPECT_EQ(d->rank, 0);
}

TEST_F(ClusterStateTest, ShardsByFreeKvThenByRunningThenByRank) {
  Form({1024, 2048});
  // Each row: a request's prompt + max_new_tokens, the rank it lands on, KV reserved after.
  struct Row {
    int prompt, max_new, rank;
    std::vector<int64_t> used;
  };
  const std::vector<Row> table = {
      {100, 28, 1, {0, 128}},      // 1024 free vs 2048: rank 1
      {900, 0, 1, {0, 1088}},      // 1024 vs 1920: rank 1 (900 → 960 tokens of pages)
      {10, 10, 0, {64, 1088}},     // 1024 vs 960: rank 0
      {30, 2, 0, {128, 1088}},     // 960 vs 960, rank 0 runs 1 and rank 1 runs 2: rank 0
      {64, 0, 1, {128, 1152}},     // 896 vs 960: rank 1
      {1, 0, 0, {192, 1152}},      // 896 vs 896, both run 2: the lower rank
  };
  for (size_t i = 0; i < table.size(); ++i) {
    auto channel = Submit(table[i].prompt, table[i].max_new);
    EXPECT_EQ(RankOf(*channel), table[i].rank) << "row " << i;
    EXPECT_EQ(KvUsed(), table[i].used) << "row " << i;
  }
  // The admissions reached the workers with the request's fields.
  ASSERT_EQ(links_[1]->Count(v1::CoordinatorMessage::kAdmit), 3);
  EXPECT_EQ(links_[1]->sent[0].admit().prompt_ids_size(), 100);
  EXPECT_EQ(links_[1]->sent[0].admit().max_new_tokens(), 28);
  EXPECT_EQ(links_[1]->sent[0].admit().top_p(), 1.0f);  // unset means 1
}

TEST_F(ClusterStateTest, FullClusterQueuesInOrderAndAdmitsAsSequencesFinish) {
  Form({256, 256});
  auto a = Submit(200, 56);  // 256: fills rank 0
  auto b = Submit(200, 56);  // fills rank 1
  auto c = Submit(10, 10);   // waits
  auto d = Submit(10, 10);   // waits behind c
  EXPECT_EQ(RankOf(*a), 0);
  EXPECT_EQ(RankOf(*b), 1);
  EXPECT_EQ(RankOf(*c), -1);
  EXPECT_EQ(state_->Status(now_).queued(), 2);
  Finish(1, b->sequence(), "length");
  // b ended: its pages went to c, then d (both fit on rank 1).
  RequestChannel::News news;
  EXPECT_TRUE(b->Take(Clock::now(), news));
  EXPECT_EQ(news.finish_reason, "length");
  EXPECT_EQ(RankOf(*c), 1);
  EXPECT_EQ(RankOf(*d), 1);
  EXPECT_EQ(KvUsed(), (std::vector<int64_t>{256, 128}));
  EXPECT_EQ(state_->Status(now_).queued(), 0);
}

TEST_F(ClusterStateTest, QueueLimitAndAdmissionDeadlineGiveResourceExhausted) {
  CoordinatorOptions options;
  options.max_queue = 1;
  Form({128, 128}, options);
  Submit(100, 28);
  Submit(100, 28);  // both workers full
  auto waiting = Submit(10, 10, std::chrono::milliseconds(100));
  auto over = state_->Submit(Request(10, 10), now_ + std::chrono::seconds(1), now_);
  ASSERT_TRUE(absl::IsResourceExhausted(over.status()));
  EXPECT_NE(over.status().message().find("queue limit"), std::string::npos) << over.status();
  state_->CheckDeadlines(now_ + std::chrono::milliseconds(50));
  RequestChannel::News news;
  EXPECT_FALSE(waiting->Take(Clock::now(), news));
  state_->CheckDeadlines(now_ + std::chrono::milliseconds(150));
  EXPECT_TRUE(waiting->Take(Clock::now(), news));
  EXPECT_TRUE(absl::IsResourceExhausted(news.status)) << news.status;
  // Larger than any worker's cache: refused at once.
  auto huge = state_->Submit(Request(100, 100), now_ + std::chrono::seconds(1), now_);
  EXPECT_TRUE(absl::IsResourceExhausted(huge.status()));
  EXPECT_EQ(metrics_.requests_by_outcome()["resource_exhausted"], 3);
}

TEST_F(ClusterStateTest, CancelDequeuesOrAbortsOnTheWorker) {
  Form({128, 128});
  auto a = Submit(100, 28);
  auto b = Submit(100, 28);
  auto queued = Submit(10, 10);
  state_->Cancel(queued->sequence());
  EXPECT_EQ(state_->Status(now_).queued(), 0);
  state_->Cancel(a->sequence());
  ASSERT_EQ(links_[0]->Count(v1::CoordinatorMessage::kAbort), 1);
  EXPECT_EQ(links_[0]->sent.back().abort().sequence(), a->sequence());
  EXPECT_EQ(KvUsed(), (std::vector<int64_t>{0, 128}));
  // The worker's late finish event for the cancelled sequence changes nothing.
  Finish(0, a->sequence(), "cancelled");
  EXPECT_EQ(KvUsed(), (std::vector<int64_t>{0, 128}));
  EXPECT_EQ(metrics_.requests_by_outcome()["cancelled"], 2);
}

TEST_F(ClusterStateTest, TokensReachTheirChannelWithLogprobsOnlyWhenAsked) {
  Form({1024, 1024});
  auto plain = Submit(4, 4);
  auto with = state_->Submit(Request(4, 4, /*logprobs=*/2), now_ + std::chrono::seconds(1), now_);
  ASSERT_TRUE(with.ok());
  const int rank_plain = RankOf(*plain), rank_with = RankOf(**with);
  for (auto [channel, rank] : {std::pair{plain, rank_plain}, std::pair{*with, rank_with}}) {
    v1::StepEvents e;
    v1::TokenEvent* t = e.add_tokens();
    t->set_sequence(channel->sequence());
    t->set_token_id(42);
    t->set_logprob(-0.5f);
    t->add_top_ids(42);
    t->add_top_logprobs(-0.5f);
    state_->OnEvents(rank, generation_, e, now_);
    // An event naming the wrong rank for this sequence is ignored.
    state_->OnEvents(1 - rank, generation_, e, now_);
  }
  RequestChannel::News news;
  plain->Take(Clock::now(), news);
  ASSERT_EQ(news.tokens.size(), 1u);
  EXPECT_EQ(news.tokens[0].token_id(), 42);
  EXPECT_EQ(news.tokens[0].top_logprobs_size(), 0);
  (*with)->Take(Clock::now(), news);
  ASSERT_EQ(news.tokens.size(), 1u);
  EXPECT_EQ(news.tokens[0].top_logprobs_size(), 1);
  EXPECT_FLOAT_EQ(news.tokens[0].logprob(), -0.5f);
  EXPECT_EQ(metrics_.generated_tokens(), 2);
}

TEST_F(ClusterStateTest, LostWorkerEndsEveryRequestThenANewLaunchServesAgain) {
  Form({128, 128});
  auto a = Submit(10, 10);
  auto b = Submit(10, 10);
  auto queued_c = Submit(100, 28);
  auto queued_d = Submit(100, 28);
  auto queued_e = Submit(100, 28);  // no room: queued
  state_->Lose(1, generation_, "its control stream closed");
  EXPECT_EQ(state_->state(), "degraded");
  for (auto* ch : {&a, &b, &queued_e}) {
    RequestChannel::News news;
    EXPECT_TRUE((*ch)->Take(Clock::now(), news));
    EXPECT_TRUE(absl::IsUnavailable(news.status));
    EXPECT_NE(news.status.message().find("worker rank 1"), std::string::npos) << news.status;
  }
  // The survivor is told to register again, so the set re-forms (the lost rank's own process
  // follows through the workers' all-reduce, or the launcher restarts the set).
  EXPECT_EQ(links_[0]->Count(v1::CoordinatorMessage::kShutdown), 1);
  EXPECT_TRUE(links_[0]->sent.back().shutdown().reregister());
  auto refused = state_->Submit(Request(4, 4), now_ + std::chrono::seconds(1), now_);
  ASSERT_TRUE(absl::IsUnavailable(refused.status()));
  EXPECT_NE(refused.status().message().find("degraded"), std::string::npos);
  // A new launch re-forms the cluster.
  ASSERT_TRUE(Register(0, 128, "launch-2").ok());
  ASSERT_TRUE(Register(1, 128, "launch-2").ok());
  EXPECT_EQ(state_->state(), "forming");
  for (int r = 0; r < 2; ++r) ASSERT_TRUE(state_->Attach(r, generation_, std::make_shared<FakeLink>(), now_).ok());
  EXPECT_EQ(state_->state(), "serving");
  EXPECT_EQ(KvUsed(), (std::vector<int64_t>{0, 0}));
  EXPECT_TRUE(state_->Submit(Request(4, 4), now_ + std::chrono::seconds(1), now_).ok());
  // Stale messages from the old generation are ignored.
  state_->Lose(0, generation_ - 1, "late");
  EXPECT_EQ(state_->state(), "serving");
}

TEST_F(ClusterStateTest, SilentWorkerIsLostAfterTheHeartbeatTimeout) {
  CoordinatorOptions options;
  options.heartbeat_timeout = std::chrono::milliseconds(5000);
  Form({128, 128}, options);
  v1::Heartbeat hb;
  state_->OnHeartbeat(0, generation_, hb, now_ + std::chrono::milliseconds(4000));
  state_->CheckDeadlines(now_ + std::chrono::milliseconds(4500));
  EXPECT_EQ(state_->state(), "serving");
  state_->CheckDeadlines(now_ + std::chrono::milliseconds(5100));  // rank 1 silent for 5.1 s
  EXPECT_EQ(state_->state(), "degraded");
  const std::string detail = state_->Status(now_).detail();
  EXPECT_NE(detail.find("worker rank 1"), std::string::npos) << detail;
  EXPECT_NE(detail.find("no heartbeat"), std::string::npos) << detail;
}

// Fault: a worker that answers heartbeats but never finishes a step. Stated bound: lost within
// stall_timeout of its last step plus one CheckDeadlines period (the server runs it every
// 100 ms); here checked to the millisecond on a fake clock.
TEST_F(ClusterStateTest, BusyWorkerWhoseStepsStallIsLostDespiteHeartbeats) {
  using std::chrono::milliseconds;
  CoordinatorOptions options;
  options.heartbeat_timeout = milliseconds(5000);
  options.stall_timeout = milliseconds(3000);
  Form({1024, 1024}, options);
  const Clock::time_point t0 = now_;
  auto heartbeat = [&](int rank, int64_t step, int64_t running, milliseconds at) {
    v1::Heartbeat hb;
    hb.set_step(step);
    hb.set_running(running);
    state_->OnHeartbeat(rank, generation_, hb, t0 + at);
  };
  // Idle for a minute: an idle worker never stalls, however old its last step.
  for (int s = 1; s <= 60; ++s) {
    heartbeat(0, 7, 0, milliseconds(1000 * s));
    heartbeat(1, 7, 0, milliseconds(1000 * s));
    state_->CheckDeadlines(t0 + milliseconds(1000 * s));
  }
  EXPECT_EQ(state_->state(), "serving");
  // A sequence arrives at 60 s; both ranks step (lockstep) until 62 s, then the steps freeze.
  auto channel = state_->Submit(Request(4, 100), t0 + milliseconds(90000), t0 + milliseconds(60000));
  ASSERT_TRUE(channel.ok());
  const int rank = RankOf(**channel);
  ASSERT_GE(rank, 0);
  int64_t step = 7;
  int last_step_ms = 0, lost_ms = 0;
  for (int ms = 60100; ms <= 70000; ms += 100) {
    if (ms <= 62000) {
      ++step;
      last_step_ms = ms;
    }
    if (ms % 1000 == 0) {  // heartbeats keep coming, with the frozen step count
      heartbeat(0, step, rank == 0 ? 1 : 0, milliseconds(ms));
      heartbeat(1, step, rank == 1 ? 1 : 0, milliseconds(ms));
    } else if (ms <= 62000) {
      heartbeat(rank, step, 1, milliseconds(ms));  // as if each step were reported
      heartbeat(1 - rank, step, 0, milliseconds(ms));
    }
    state_->CheckDeadlines(t0 + milliseconds(ms));
    if (state_->state() != "serving") {
      lost_ms = ms;
      break;
    }
  }
  const std::string detail = state_->Status(now_).detail();
  ASSERT_EQ(state_->state(), "degraded") << detail;
  EXPECT_NE(detail.find(absl::StrCat("worker rank ", rank)), std::string::npos) << detail;
  EXPECT_NE(detail.find("no step has finished"), std::string::npos) << detail;
  EXPECT_NE(detail.find("--stall-timeout"), std::string::npos) << detail;
  RequestChannel::News news;
  ASSERT_TRUE((*channel)->Take(Clock::now(), news));
  EXPECT_TRUE(absl::IsUnavailable(news.status)) << news.status;
  // Detected at the first check more than 3000 ms after the last step (checks every 100 ms).
  EXPECT_EQ(lost_ms - last_step_ms, 3100);
  EXPECT_EQ(metrics_.requests_by_outcome().at("unavailable"), 1);
}

TEST_F(ClusterStateTest, StallTimeoutZeroIsOff) {
  CoordinatorOptions options;
  options.stall_timeout = std::chrono::milliseconds(0);
  options.heartbeat_timeout = std::chrono::milliseconds(5000);
  Form({1024, 1024}, options);
  ASSERT_NE(Submit(4, 100), nullptr);
  for (int s = 1; s <= 30; ++s) {
    v1::Heartbeat hb;
    hb.set_step(1);
    hb.set_running(1);
    for (int r = 0; r < 2; ++r) state_->OnHeartbeat(r, generation_, hb, now_ + std::chrono::seconds(s));
    state_->CheckDeadlines(now_ + std::chrono::seconds(s));
  }
  EXPECT_EQ(state_->state(), "serving");
}

TEST_F(ClusterStateTest, RebalancesFromMeasuredLoadOnlyWhenItHelps) {
  CoordinatorOptions options;
  options.redundant_experts = 2;
  Form({1024, 1024}, options);
  EXPECT_FALSE(state_->Rebalance());  // nothing measured: nothing to gain
  // A skewed load in every MoE layer: expert 11 takes half the tokens.
  v1::StepEvents e;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    if (!config_.is_moe_layer(l)) continue;
    for (int64_t x = 0; x < config_.n_routed_experts; ++x) e.add_expert_tokens(x == 11 ? 150 : 10);
  }
  state_->OnEvents(0, generation_, e, now_);
  const double before = state_->Status(now_).imbalance();
  ASSERT_TRUE(state_->Rebalance());
  const v1::ClusterStatusResponse after = state_->Status(now_);
  EXPECT_EQ(after.placement_version(), 1);
  EXPECT_LT(after.imbalance(), before * 0.9);
  for (const auto& link : links_) {
    ASSERT_EQ(link->Count(v1::CoordinatorMessage::kPlacementUpdate), 1);
    EXPECT_EQ(link->sent.back().placement_update().version(), 1);
  }
  EXPECT_FALSE(state_->Rebalance());  // the same load again: no better placement
}

// GPU workers place their experts at formation only: the same skew sends them nothing.
TEST_F(ClusterStateTest, NeverSendsAPlacementUpdateToGpuWorkers) {
  CoordinatorOptions options;
  options.redundant_experts = 2;
  device_ = "cuda:0";
  Form({1024, 1024}, options);
  v1::StepEvents e;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    if (!config_.is_moe_layer(l)) continue;
    for (int64_t x = 0; x < config_.n_routed_experts; ++x) e.add_expert_tokens(x == 11 ? 150 : 10);
  }
  state_->OnEvents(0, generation_, e, now_);
  EXPECT_FALSE(state_->Rebalance());
  for (const auto& link : links_) EXPECT_EQ(link->Count(v1::CoordinatorMessage::kPlacementUpdate), 0);
  EXPECT_EQ(state_->Status(now_).placement_version(), 0);
}

TEST(ValidateTest, NamesTheFieldAndWhy) {
  ModelConfig c = *PresetConfig("tiny");
  auto check = [&](auto edit, const std::string& field) {
    v1::GenerateRequest r;
    r.add_prompt_ids(1);
    r.set_max_new_tokens(4);
    edit(r);
    absl::Status s = ValidateGenerateRequest(r, c);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
  };
  check([](auto& r) { r.clear_prompt_ids(); }, "prompt_ids is empty");
  check([&](auto& r) { r.add_prompt_ids(static_cast<int32_t>(c.vocab_size)); }, "prompt_ids[1]");
  check([](auto& r) { r.add_prompt_ids(-1); }, "prompt_ids[1]");
  check([&](auto& r) { r.set_max_new_tokens(c.max_position_embeddings); }, "context");
  check([](auto& r) { r.mutable_sampling()->set_temperature(-1); }, "temperature");
  check([](auto& r) { r.mutable_sampling()->set_temperature(std::numeric_limits<float>::infinity()); }, "temperature");
  check([](auto& r) { r.mutable_sampling()->set_temperature(std::numeric_limits<float>::quiet_NaN()); }, "temperature");
  check([](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }, "top_p");
  check([](auto& r) { r.mutable_sampling()->set_top_p(-0.1f); }, "top_p");
  check([](auto& r) { r.set_logprobs(21); }, "logprobs");
  v1::GenerateRequest ok;
  ok.add_prompt_ids(1);
  ok.set_max_new_tokens(4);
  EXPECT_TRUE(ValidateGenerateRequest(ok, c).ok());
}

}  // namespace
}  // namespace daedalus
