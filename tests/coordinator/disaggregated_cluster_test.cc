// A prefill group and a decode group behind one Cluster, with fake workers whose control
// streams record what they are sent: a request is admitted to a prefill worker with hand_off,
// reserving its prompt's pages only; its first token streams and its pages' report moves it to
// the decode worker with the most free KV, named in Admit.kv_source after the streamed token;
// the decode worker's receipt releases the prefill worker's pages. A decode worker lost before
// its read re-admits the sequence on another with the same source; a cancelled one releases it
// too. Workers of the wrong role are refused.
#include "coordinator/cluster.h"

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/coordinator/fake_cluster.h"

namespace daedalus {
namespace {

class DisaggregatedClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CoordinatorOptions options;
    options.prefill_world_size = 1;
    options.decode_world_size = 2;
    auto made = Cluster::Create(config_, "tiny", options, &metrics_);
    ASSERT_TRUE(made.ok()) << made.status();
    cluster_ = std::move(*made);
    Add("prefill", 0, 1, 4096);
    Add("decode", 0, 2);
    Add("decode", 1, 2);
    ASSERT_EQ(cluster_->state(), "serving");
  }
  void Add(const std::string& role, int rank, int world, int64_t kv_tokens = 1024) {
    v1::RegisterRequest r;
    r.set_rank(rank);
    r.set_world_size(world);
    r.set_host("test");
    r.set_launch_id(role);
    r.set_kv_capacity_tokens(kv_tokens);
    r.set_kv_page_size(64);
    r.set_transport("ucx");
    r.set_role(role);
    r.set_kv_transfer_address(role + "-address-" + std::to_string(rank));
    r.set_kv_pool_key(role + "-key-" + std::to_string(rank));
    auto registered = cluster_->Register(r, now_);
    ASSERT_TRUE(registered.ok()) << registered.status();
    generation_[role] = registered->generation;
    auto link = std::make_shared<FakeLink>();
    (role == "prefill" ? prefill_ : decode_).push_back(link);
    ASSERT_TRUE(cluster_->Attach(role, rank, registered->generation, link, now_).ok());
  }
  std::shared_ptr<RequestChannel> Submit(int64_t prompt, int64_t max_new) {
    v1::GenerateRequest g;
    for (int64_t i = 0; i < prompt; ++i) g.add_prompt_ids(static_cast<int32_t>(5 + i % 100));
    g.set_max_new_tokens(static_cast<int32_t>(max_new));
    auto channel = cluster_->Submit(g, now_ + std::chrono::seconds(30), now_);
    EXPECT_TRUE(channel.ok()) << channel.status();
    return channel.ok() ? *channel : nullptr;
  }
  // The prefill worker computed the prompt: its first token, and its pages held.
  void Prefilled(uint64_t sequence, int32_t token, int64_t prompt) {
    v1::StepEvents e;
    e.add_tokens()->set_sequence(sequence);
    e.mutable_tokens(0)->set_token_id(token);
    v1::KvReady* ready = e.add_kv_ready();
    ready->set_sequence(sequence);
    ready->add_pages(3);
    ready->add_pages(4);
    ready->set_tokens(prompt);
    ready->set_page_size(64);
    ready->set_row_bytes(160);
    cluster_->OnEvents("prefill", 0, generation_["prefill"], e, now_);
  }
  void Received(int decode_rank, uint64_t sequence, int64_t bytes) {
    v1::StepEvents e;
    v1::KvReceived* r = e.add_kv_received();
    r->set_sequence(sequence);
    r->set_ok(true);
    r->set_bytes(bytes);
    r->set_seconds(0.01);
    cluster_->OnEvents("decode", decode_rank, generation_["decode"], e, now_);
  }
  // The decode worker the sequence was last admitted to (-1: none), and that Admit.
  int DecodeRankOf(uint64_t sequence, const v1::Admit** admit = nullptr) const {
    int rank = -1;
    for (size_t r = 0; r < decode_.size(); ++r)
      for (const auto& m : decode_[r]->sent)
        if (m.has_admit() && m.admit().sequence() == sequence) {
          rank = static_cast<int>(r);
          if (admit) *admit = &m.admit();
        }
    return rank;
  }
  int Releases(uint64_t sequence) const {
    int n = 0;
    for (const auto& m : prefill_[0]->sent) n += m.has_release() && m.release().sequence() == sequence;
    return n;
  }
  int64_t PrefillKvUsed() const { return cluster_->Status(now_).workers(0).kv_used_tokens(); }

  ModelConfig config_ = *PresetConfig("tiny");
  Metrics metrics_;
  Clock::time_point now_ = Clock::time_point{} + std::chrono::hours(1);
  std::unique_ptr<Cluster> cluster_;
  std::map<std::string, int64_t> generation_;
  std::vector<std::shared_ptr<FakeLink>> prefill_, decode_;
};

TEST_F(DisaggregatedClusterTest, ASequenceMovesFromPrefillToDecodeAndReleasesItsPages) {
  auto channel = Submit(100, 50);
  ASSERT_NE(channel, nullptr);
  const uint64_t seq = channel->sequence();
  ASSERT_EQ(prefill_[0]->Count(v1::CoordinatorMessage::kAdmit), 1);
  EXPECT_TRUE(prefill_[0]->sent[0].admit().hand_off());
  EXPECT_FALSE(prefill_[0]->sent[0].admit().has_kv_source());
  EXPECT_EQ(PrefillKvUsed(), 128);  // the prompt and one token, in 64-token pages; not the 50 to generate
  EXPECT_EQ(DecodeRankOf(seq), -1);

  Prefilled(seq, 7, 100);
  RequestChannel::News news;
  channel->Take(Clock::time_point{}, news);
  ASSERT_EQ(news.tokens.size(), 1u);  // the first token streams at once
  EXPECT_EQ(news.tokens[0].token_id(), 7);
  const v1::Admit* admit = nullptr;
  const int rank = DecodeRankOf(seq, &admit);
  ASSERT_GE(rank, 0);
  EXPECT_FALSE(admit->hand_off());
  EXPECT_EQ(std::vector<int32_t>(admit->generated_ids().begin(), admit->generated_ids().end()), std::vector<int32_t>{7});
  EXPECT_EQ(admit->kv_source().address(), "prefill-address-0");
  EXPECT_EQ(admit->kv_source().pool_key(), "prefill-key-0");
  EXPECT_EQ(std::vector<int32_t>(admit->kv_source().pages().begin(), admit->kv_source().pages().end()), (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(admit->kv_source().tokens(), 100);
  EXPECT_EQ(admit->kv_source().page_size(), 64);  // the prefill pool's layout, for the decode worker to check
  EXPECT_EQ(admit->kv_source().row_bytes(), 160);
  EXPECT_EQ(Releases(seq), 0);  // held until read
  EXPECT_EQ(PrefillKvUsed(), 128);

  Received(rank, seq, 48000);
  EXPECT_EQ(Releases(seq), 1);
  EXPECT_EQ(PrefillKvUsed(), 0);
  EXPECT_EQ(metrics_.kv_transfer_bytes(), 48000);

  // The decode worker's tokens and end reach the same call.
  v1::StepEvents e;
  e.add_tokens()->set_sequence(seq);
  e.mutable_tokens(0)->set_token_id(9);
  e.add_finished()->set_sequence(seq);
  e.mutable_finished(0)->set_reason("length");
  cluster_->OnEvents("decode", rank, generation_["decode"], e, now_);
  RequestChannel::News rest;
  channel->Take(Clock::time_point{}, rest);
  ASSERT_EQ(rest.tokens.size(), 1u);
  EXPECT_EQ(rest.tokens[0].token_id(), 9);
  EXPECT_TRUE(rest.finished);
  EXPECT_EQ(rest.finish_reason, "length");
}

TEST_F(DisaggregatedClusterTest, ALostDecodeWorkerPassesTheSameSourceOn) {
  auto channel = Submit(100, 50);
  const uint64_t seq = channel->sequence();
  Prefilled(seq, 7, 100);
  const int first = DecodeRankOf(seq);
  ASSERT_GE(first, 0);
  const size_t sent_before = decode_[1 - first]->sent.size();
  cluster_->Lose("decode", first, generation_["decode"], "killed");
  const v1::Admit* again = nullptr;
  for (size_t i = sent_before; i < decode_[1 - first]->sent.size(); ++i)
    if (decode_[1 - first]->sent[i].has_admit()) again = &decode_[1 - first]->sent[i].admit();
  ASSERT_NE(again, nullptr) << "re-admitted on the other decode worker";
  EXPECT_EQ(again->kv_source().address(), "prefill-address-0");  // the pages are still held
  EXPECT_EQ(Releases(seq), 0);
  cluster_->Cancel(seq);  // a sequence that ends before its read releases its source too
  EXPECT_EQ(Releases(seq), 1);
  EXPECT_EQ(PrefillKvUsed(), 0);
}

TEST_F(DisaggregatedClusterTest, ARequestNoDecodeWorkerCouldHoldIsRefusedBeforeItsPrefill) {
  v1::GenerateRequest g;
  for (int i = 0; i < 100; ++i) g.add_prompt_ids(5);
  g.set_max_new_tokens(2000);  // 2,112 tokens of KV: more than any decode worker's 1,024
  auto refused = cluster_->Submit(g, now_ + std::chrono::seconds(30), now_);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("the largest decode worker cache holds 1024"), std::string::npos)
      << refused.status();
  EXPECT_EQ(prefill_[0]->Count(v1::CoordinatorMessage::kAdmit), 0);
  EXPECT_EQ(metrics_.requests_by_outcome()["resource_exhausted"], 1);
}

TEST_F(DisaggregatedClusterTest, TheLongestSequenceIsTheDecodeGroups) {
  // The prefill group reserves a prompt's pages only: a sequence's length is bounded by where
  // it is decoded, not by the prefill worker's larger cache.
  EXPECT_EQ(cluster_->LongestSequence(), 1024);
}

TEST_F(DisaggregatedClusterTest, RefusesWorkersOfAnotherRole) {
  v1::RegisterRequest r;
  r.set_rank(0);
  r.set_kv_capacity_tokens(1024);
  r.set_kv_page_size(64);
  auto mixed = cluster_->Register(r, now_);
  ASSERT_FALSE(mixed.ok());
  EXPECT_NE(mixed.status().message().find("--role prefill or --role decode"), std::string::npos) << mixed.status();

  CoordinatorOptions options;
  options.prefill_world_size = 0;
  options.decode_world_size = 2;
  EXPECT_EQ(Cluster::Create(config_, "tiny", options, &metrics_).status().code(), absl::StatusCode::kInvalidArgument);
  options.world_size = 1;
  options.decode_world_size = 0;
  auto plain = Cluster::Create(config_, "tiny", options, &metrics_);
  ASSERT_TRUE(plain.ok());
  r.set_role("decode");
  EXPECT_EQ((*plain)->Register(r, now_).status().code(), absl::StatusCode::kInvalidArgument);
}

// A cancel that arrives while the prefill worker's events hand a sequence off (after the prefill
// group let it go, before the decode group took it) still reaches it: it had found it in neither
// group and been lost, and the decode worker then ran the cancelled sequence to its end.
class HookLink : public FakeLink {
 public:
  std::function<void(const v1::CoordinatorMessage&)> hook;
  bool Send(const v1::CoordinatorMessage& m) override {
    FakeLink::Send(m);
    if (hook) hook(m);
    return true;
  }
};

TEST(DisaggregatedHandOff, ACancelDuringAHandOffIsNotLost) {
  Metrics metrics;
  CoordinatorOptions options;
  options.prefill_world_size = 1;
  options.decode_world_size = 1;
  auto cluster = std::move(*Cluster::Create(*PresetConfig("tiny"), "tiny", options, &metrics));
  const Clock::time_point now = Clock::now();
  std::map<std::string, int64_t> generation;
  std::map<std::string, std::shared_ptr<HookLink>> links;
  for (const std::string role : {"prefill", "decode"}) {
    v1::RegisterRequest r;
    r.set_rank(0);
    r.set_world_size(1);
    r.set_host("test");
    r.set_launch_id(role);
    r.set_kv_capacity_tokens(role == "prefill" ? 256 : 4096);
    r.set_kv_page_size(64);
    r.set_transport("ucx");
    r.set_role(role);
    auto registered = cluster->Register(r, now);
    ASSERT_TRUE(registered.ok()) << registered.status();
    generation[role] = registered->generation;
    links[role] = std::make_shared<HookLink>();
    ASSERT_TRUE(cluster->Attach(role, 0, registered->generation, links[role], now).ok());
  }
  auto submit = [&] {
    v1::GenerateRequest g;
    for (int i = 0; i < 100; ++i) g.add_prompt_ids(5 + i);
    g.set_max_new_tokens(50);
    return *cluster->Submit(g, now + std::chrono::seconds(30), now);
  };
  auto a = submit(), c = submit(), b = submit();  // a and c fill the prefill worker; b waits
  ASSERT_EQ(links["prefill"]->Count(v1::CoordinatorMessage::kAdmit), 2);
  // a's client cancels while the events that hand a off (and end c) admit b, inside OnEvents.
  std::thread canceller;
  links["prefill"]->hook = [&](const v1::CoordinatorMessage& m) {
    if (!m.has_admit() || m.admit().sequence() != b->sequence()) return;
    canceller = std::thread([&] { cluster->Cancel(a->sequence()); });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  };
  v1::StepEvents e;
  e.add_tokens()->set_sequence(a->sequence());
  e.mutable_tokens(0)->set_token_id(7);
  auto* ready = e.add_kv_ready();
  ready->set_sequence(a->sequence());
  ready->add_pages(0);
  ready->add_pages(1);
  ready->set_tokens(100);
  ready->set_page_size(64);
  ready->set_row_bytes(160);
  auto* finished = e.add_finished();
  finished->set_sequence(c->sequence());
  finished->set_reason("length");
  cluster->OnEvents("prefill", 0, generation["prefill"], e, now);
  ASSERT_TRUE(canceller.joinable()) << "b was not admitted by those events";
  canceller.join();
  const HookLink& decode = *links["decode"];
  EXPECT_EQ(decode.Count(v1::CoordinatorMessage::kAdmit), decode.Count(v1::CoordinatorMessage::kAbort))
      << "the decode worker was left running the cancelled sequence";
  EXPECT_EQ(cluster->Status(now).workers(1).running(), 0);
}

}  // namespace
}  // namespace daedalus
