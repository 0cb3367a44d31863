// A ClusterState formed from fake workers whose control streams record what they are sent:
// the fixture of the coordinator's bookkeeping tests.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "coordinator/cluster_state.h"
#include "worker/presets.h"

namespace daedalus {

using Clock = ClusterState::Clock;

class FakeLink : public WorkerLink {
 public:
  bool Send(const v1::CoordinatorMessage& m) override {
    sent.push_back(m);
    return true;
  }
  int Count(v1::CoordinatorMessage::KindCase kind) const {
    int n = 0;
    for (const auto& m : sent) n += m.kind_case() == kind;
    return n;
  }
  std::vector<v1::CoordinatorMessage> sent;
};

class ClusterStateTest : public ::testing::Test {
 protected:
  // A formed cluster of `capacities.size()` workers with these KV capacities (64-token pages).
  void Form(std::vector<int64_t> capacities, CoordinatorOptions options = {}) {
    options.world_size = world_ = static_cast<int>(capacities.size());
    config_ = *PresetConfig("tiny");
    state_ = std::make_unique<ClusterState>(config_, "tiny", options, &metrics_);
    links_.clear();
    for (int r = 0; r < options.world_size; ++r) ASSERT_TRUE(Register(r, capacities[r], "launch-1").ok());
    for (int r = 0; r < options.world_size; ++r) {
      links_.push_back(std::make_shared<FakeLink>());
      ASSERT_TRUE(state_->Attach(r, generation_, links_[r], now_).ok());
    }
    ASSERT_EQ(state_->state(), "serving");
  }
  absl::StatusOr<int64_t> Register(int rank, int64_t capacity, const std::string& launch) {
    auto g = RegisterFull(rank, capacity, launch);
    if (!g.ok()) return g.status();
    return g->generation;
  }
  absl::StatusOr<ClusterState::Registration> RegisterFull(int rank, int64_t capacity, const std::string& launch) {
    v1::RegisterRequest r;
    r.set_rank(rank);
    r.set_world_size(world_);
    r.set_host("test");
    r.set_pid(1000 + rank);
    r.set_launch_id(launch);
    r.set_kv_capacity_tokens(capacity);
    r.set_kv_page_size(64);
    r.set_prefix_caching(prefix_caching_);
    r.set_device(device_);
    r.set_transport(transport_);
    r.set_data_plane_address("addr-" + std::to_string(rank) + launch);
    auto g = state_->Register(r, now_);
    if (g.ok()) generation_ = g->generation;
    return g;
  }
  v1::GenerateRequest Request(int prompt, int max_new, int logprobs = 0) {
    std::vector<int32_t> ids;
    for (int i = 0; i < prompt; ++i) ids.push_back(i % 10);
    return Request(ids, max_new, logprobs);
  }
  v1::GenerateRequest Request(const std::vector<int32_t>& prompt, int max_new, int logprobs = 0) {
    v1::GenerateRequest r;
    *r.mutable_prompt_ids() = {prompt.begin(), prompt.end()};
    r.set_max_new_tokens(max_new);
    r.set_logprobs(logprobs);
    return r;
  }
  std::shared_ptr<RequestChannel> Submit(int prompt, int max_new, std::chrono::milliseconds wait = std::chrono::seconds(30)) {
    auto s = state_->Submit(Request(prompt, max_new), now_ + wait, now_);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : nullptr;
  }
  std::vector<int64_t> KvUsed() {
    std::vector<int64_t> used;
    const v1::ClusterStatusResponse status = state_->Status(now_);
    for (const auto& w : status.workers()) used.push_back(w.kv_used_tokens());
    return used;
  }
  // The rank the sequence was admitted to, from its channel (-1: still queued).
  static int RankOf(RequestChannel& channel) {
    RequestChannel::News news;
    channel.Take(Clock::now(), news);
    return news.worker_rank;
  }
  void Finish(int rank, uint64_t sequence, const std::string& reason) {
    v1::StepEvents e;
    e.add_finished()->set_sequence(sequence);
    e.mutable_finished(0)->set_reason(reason);
    state_->OnEvents(rank, generation_, e, now_);
  }

  int world_ = 2;
  bool prefix_caching_ = false;  // what the workers register with
  std::string device_ = "cpu";
  std::string transport_;  // "ucx": an elastic cluster
  ModelConfig config_;
  Metrics metrics_;
  std::unique_ptr<ClusterState> state_;
  std::vector<std::shared_ptr<FakeLink>> links_;
  int64_t generation_ = 0;
  Clock::time_point now_ = Clock::now();
};

}  // namespace daedalus
