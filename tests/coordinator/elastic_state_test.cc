// The coordinator's bookkeeping of an elastic cluster (every worker on the ucx data plane),
// driven by fake workers: a lost worker shrinks the world and its sequences continue on the
// survivors after the tokens already streamed; a new worker joins with the next rank; clusters
// that cannot shrink (mpi, GPU workers) fail their requests as before.
#include <gtest/gtest.h>

#include <set>

#include "coordinator/cluster_state.h"
#include "tests/coordinator/fake_cluster.h"

namespace daedalus {
namespace {

// The last message of `kind` sent on `link` (null when none).
const v1::CoordinatorMessage* Last(const FakeLink& link, v1::CoordinatorMessage::KindCase kind) {
  for (auto it = link.sent.rbegin(); it != link.sent.rend(); ++it)
    if (it->kind_case() == kind) return &*it;
  return nullptr;
}

// The Admit of `sequence` on `link`, the last one (null when none).
const v1::Admit* AdmitOf(const FakeLink& link, uint64_t sequence) {
  for (auto it = link.sent.rbegin(); it != link.sent.rend(); ++it)
    if (it->has_admit() && it->admit().sequence() == sequence) return &it->admit();
  return nullptr;
}

// What arrived on a channel since the last look.
RequestChannel::News Drain(RequestChannel& channel) {
  RequestChannel::News news;
  channel.Take(Clock::now(), news);
  return news;
}

class ElasticStateTest : public ClusterStateTest {
 protected:
  // Three ucx workers; one sequence admitted to each (the most free KV, then the lowest rank).
  void FormThree() {
    transport_ = "ucx";
    world_ = 3;
    Form({4096, 4096, 4096});
    for (int r = 0; r < 3; ++r) {
      channels_.push_back(Submit(4, 8));
      ASSERT_EQ(RankOf(*channels_.back()), r);
      sequence_.push_back(links_[r]->sent.back().admit().sequence());
    }
  }
  void Tokens(int rank, uint64_t sequence, std::vector<int32_t> ids) {
    v1::StepEvents e;
    for (int32_t id : ids) {
      v1::TokenEvent* t = e.add_tokens();
      t->set_sequence(sequence);
      t->set_token_id(id);
    }
    state_->OnEvents(rank, generation_, e, now_);
  }
  std::vector<std::shared_ptr<RequestChannel>> channels_;
  std::vector<uint64_t> sequence_;
};

TEST_F(ElasticStateTest, ALostWorkerShrinksTheWorldAndItsSequencesContinueOnSurvivors) {
  FormThree();
  Tokens(1, sequence_[1], {11, 12, 13});
  // A second sequence on rank 1 whose every token was streamed, its end not yet reported.
  auto done = Submit(4, 2);
  ASSERT_EQ(RankOf(*done), 0);  // rank 0 runs one, as every rank does: the lowest rank
  auto on_one = Submit(4, 2);
  ASSERT_EQ(RankOf(*on_one), 1);
  const uint64_t on_one_id = links_[1]->sent.back().admit().sequence();
  Tokens(1, on_one_id, {7, 8});

  state_->Lose(1, generation_, "its control stream closed");
  const v1::ClusterStatusResponse s = state_->Status(now_);
  EXPECT_EQ(s.state(), "serving");
  EXPECT_EQ(s.world_size(), 2);
  EXPECT_EQ(s.generation(), generation_ + 1);
  EXPECT_TRUE(s.elastic());
  // The survivors are renumbered in order and told the new world, with its addresses.
  for (int r : {0, 2}) {
    const v1::CoordinatorMessage* m = Last(*links_[r], v1::CoordinatorMessage::kReform);
    ASSERT_NE(m, nullptr) << "rank " << r;
    EXPECT_EQ(m->reform().rank(), r == 0 ? 0 : 1);
    EXPECT_EQ(m->reform().world_size(), 2);
    EXPECT_EQ(m->reform().generation(), generation_ + 1);
    EXPECT_EQ(std::vector<std::string>(m->reform().data_plane_addresses().begin(), m->reform().data_plane_addresses().end()),
              (std::vector<std::string>{"addr-0launch-1", "addr-2launch-1"}));
    ASSERT_EQ(m->reform().placement().layers_size(), config_.num_hidden_layers);
  }
  // The lost one, were it alive, is told to go.
  const v1::CoordinatorMessage* bye = Last(*links_[1], v1::CoordinatorMessage::kShutdown);
  ASSERT_NE(bye, nullptr);
  EXPECT_FALSE(bye->shutdown().reregister());
  // Its sequence continues on a survivor after the three tokens streamed; the finished one ends.
  const v1::Admit* again = AdmitOf(*links_[0], sequence_[1]);
  if (again == nullptr) again = AdmitOf(*links_[2], sequence_[1]);
  ASSERT_NE(again, nullptr) << "the lost worker's sequence was not admitted again";
  EXPECT_EQ(std::vector<int32_t>(again->generated_ids().begin(), again->generated_ids().end()), (std::vector<int32_t>{11, 12, 13}));
  EXPECT_EQ(again->max_new_tokens(), 8);
  EXPECT_FALSE(Drain(*channels_[1]).finished);
  const RequestChannel::News ended = Drain(*on_one);
  EXPECT_TRUE(ended.finished);
  EXPECT_TRUE(ended.status.ok()) << ended.status;
  EXPECT_EQ(ended.finish_reason, "length");
  // Workers keep the names their Hello gave: rank 2's events still reach its sequence.
  Tokens(2, sequence_[2], {5});
  const RequestChannel::News news = Drain(*channels_[2]);
  ASSERT_EQ(news.tokens.size(), 1u);
  EXPECT_EQ(news.tokens[0].token_id(), 5);
  EXPECT_EQ(news.worker_rank, 1);  // its worker's rank now
}

TEST_F(ElasticStateTest, AWorkerJoinsWithTheNextRankOneAtATime) {
  FormThree();
  state_->Lose(2, generation_, "killed");
  const int64_t shrunk = state_->generation();
  auto joiner = RegisterFull(-1, 8192, "launch-1");  // the most free KV once it serves
  ASSERT_TRUE(joiner.ok()) << joiner.status();
  EXPECT_EQ(joiner->rank, 2);
  EXPECT_EQ(joiner->generation, shrunk + 1);
  EXPECT_TRUE(absl::IsUnavailable(RegisterFull(-1, 4096, "launch-1").status())) << "a second joiner waits its turn";
  auto a = state_->WaitAssignment(joiner->generation, 2, now_);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->join());
  EXPECT_EQ(a->world_size(), 3);
  ASSERT_EQ(a->data_plane_addresses_size(), 3);
  EXPECT_EQ(a->data_plane_addresses(2), "addr--1launch-1");
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    if (config_.is_moe_layer(l)) {
      EXPECT_EQ(a->placement().layers(l).experts_on(2).experts_size(), 0);
    }
  }
  EXPECT_EQ(state_->Status(now_).world_size(), 2) << "not in the world before it attaches";
  auto link = std::make_shared<FakeLink>();
  ASSERT_TRUE(state_->Attach(2, joiner->generation, link, now_).ok());
  const v1::ClusterStatusResponse s = state_->Status(now_);
  EXPECT_EQ(s.world_size(), 3);
  EXPECT_EQ(s.generation(), joiner->generation);
  for (int r : {0, 1}) {
    const v1::CoordinatorMessage* m = Last(*links_[r], v1::CoordinatorMessage::kReform);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->reform().rank(), r);
    EXPECT_EQ(m->reform().world_size(), 3);
    EXPECT_EQ(m->reform().generation(), joiner->generation);
  }
  EXPECT_EQ(link->Count(v1::CoordinatorMessage::kReform), 0);
  // Experts move onto it: every worker gets the same placement update, the joiner's share non-empty.
  const v1::CoordinatorMessage* update = Last(*link, v1::CoordinatorMessage::kPlacementUpdate);
  ASSERT_NE(update, nullptr);
  for (int r : {0, 1}) {
    const v1::CoordinatorMessage* m = Last(*links_[r], v1::CoordinatorMessage::kPlacementUpdate);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->SerializeAsString(), update->SerializeAsString());
  }
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    if (config_.is_moe_layer(l)) {
      EXPECT_GT(update->placement_update().placement().layers(l).experts_on(2).experts_size(), 0);
    }
  }
  // New sequences go to it (the most free KV).
  auto next = Submit(4, 8);
  EXPECT_EQ(RankOf(*next), 2);
  EXPECT_TRUE(absl::IsAlreadyExists(RegisterFull(-1, 4096, "launch-1").status())) << "full again";
}

// A worker lost while a placement update is in flight (the joiner's experts being read, no rank
// switched yet): the survivors' Reform carries a placement of the smaller world that holds every
// expert, newer than the update, so whatever each survivor had read, it switches to one that
// covers the model. Either the joiner itself or an old member may be the one lost.
TEST_F(ElasticStateTest, AWorkerLostDuringAPlacementSwitchLeavesAPlacementCoveringEveryExpert) {
  for (const bool lose_joiner : {true, false}) {
    links_.clear();
    channels_.clear();
    sequence_.clear();
    FormThree();
    const int64_t formed = generation_;  // the old members' Hello generation
    state_->Lose(2, formed, "killed");
    auto joiner = RegisterFull(-1, 8192, "launch-1");
    ASSERT_TRUE(joiner.ok()) << joiner.status();
    auto link = std::make_shared<FakeLink>();
    ASSERT_TRUE(state_->Attach(2, joiner->generation, link, now_).ok());
    const v1::CoordinatorMessage* update = Last(*link, v1::CoordinatorMessage::kPlacementUpdate);
    ASSERT_NE(update, nullptr);
    const int64_t update_version = update->placement_update().version();
    // Lost before any rank switched: the joiner (hello rank 2), or rank 0 (hello rank 0).
    if (lose_joiner) state_->Lose(2, joiner->generation, "killed while reading its experts");
    else state_->Lose(0, formed, "killed during the switch");
    const v1::ClusterStatusResponse status = state_->Status(now_);
    ASSERT_EQ(status.world_size(), 2);
    EXPECT_GT(status.placement_version(), update_version);
    std::vector<FakeLink*> survivors;
    if (lose_joiner) survivors = {links_[0].get(), links_[1].get()};
    else survivors = {links_[1].get(), link.get()};
    for (size_t i = 0; i < survivors.size(); ++i) {
      const v1::CoordinatorMessage* m = Last(*survivors[i], v1::CoordinatorMessage::kReform);
      ASSERT_NE(m, nullptr) << "survivor " << i << (lose_joiner ? ", joiner lost" : ", rank 0 lost");
      EXPECT_EQ(m->reform().world_size(), 2);
      EXPECT_EQ(m->reform().rank(), static_cast<int>(i));
      const v1::Placement& placed = m->reform().placement();
      for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
        if (!config_.is_moe_layer(l)) continue;
        ASSERT_EQ(placed.layers(l).experts_on_size(), 2) << "layer " << l;
        std::set<int32_t> held;
        for (const auto& on : placed.layers(l).experts_on()) held.insert(on.experts().begin(), on.experts().end());
        EXPECT_EQ(static_cast<int64_t>(held.size()), config_.n_routed_experts)
            << "layer " << l << (lose_joiner ? ", joiner lost" : ", rank 0 lost") << ": an expert with no holder";
      }
    }
    // Nothing was failed: the survivors' sequences are still running or queued to continue.
    for (int r : {0, 1, 2}) EXPECT_FALSE(Drain(*channels_[r]).finished) << "sequence of rank " << r;
  }
}

TEST_F(ElasticStateTest, AJoinerPlannedForAWorldThatShrankMustRegisterAgain) {
  FormThree();
  const int64_t formed = generation_;  // what every Hello named
  state_->Lose(2, formed, "killed");
  auto joiner = RegisterFull(-1, 4096, "launch-1");
  ASSERT_TRUE(joiner.ok());
  state_->Lose(1, formed, "killed too");
  EXPECT_TRUE(absl::IsFailedPrecondition(state_->Attach(2, joiner->generation, std::make_shared<FakeLink>(), now_)));
}

TEST_F(ElasticStateTest, ARankIsLostOnceEveryOtherRankReportsItsCollectiveWaitedForIt) {
  FormThree();
  const int64_t formed = generation_;
  auto report = [&](int rank, std::vector<int32_t> ranks, int64_t generation) {
    v1::PeersLost lost;
    lost.set_generation(generation);
    *lost.mutable_ranks() = {ranks.begin(), ranks.end()};
    lost.set_message("all-to-all timed out");
    state_->OnPeersLost(rank, formed, lost, now_);
  };
  // Rank 0 is a step ahead, in an all-reduce: it waits for both others.
  report(0, {1, 2}, formed);
  EXPECT_EQ(state_->Status(now_).world_size(), 3) << "one report loses no one";
  report(2, {1}, formed - 1);  // of an older world: ignored
  EXPECT_EQ(state_->Status(now_).world_size(), 3);
  report(2, {1}, formed);
  const v1::ClusterStatusResponse s = state_->Status(now_);
  ASSERT_EQ(s.world_size(), 2) << "rank 1, named by both others, is lost";
  EXPECT_EQ(s.workers(0).pid(), 1000);
  EXPECT_EQ(s.workers(1).pid(), 1002) << "rank 2, named by one, is not";
  const v1::CoordinatorMessage* bye = Last(*links_[1], v1::CoordinatorMessage::kShutdown);
  ASSERT_NE(bye, nullptr);
  EXPECT_NE(bye->shutdown().reason().find("every other worker's collective timed out waiting for it"), std::string::npos)
      << bye->shutdown().reason();
}

TEST_F(ElasticStateTest, RanksHungTogetherAreLostTogetherAfterAGrace) {
  FormThree();
  const int64_t formed = generation_;
  v1::PeersLost lost;
  lost.set_generation(formed);
  lost.add_ranks(1);
  lost.add_ranks(2);
  lost.set_message("all-reduce timed out");
  state_->OnPeersLost(0, formed, lost, now_);  // ranks 1 and 2 hang; only rank 0 can say so
  auto beat = [&](Clock::time_point at) {  // the hung ranks' heartbeat threads live on
    for (int r = 0; r < 3; ++r) state_->OnHeartbeat(r, formed, v1::Heartbeat{}, at);
  };
  const auto grace = std::chrono::milliseconds(5000);  // heartbeat_timeout
  beat(now_ + grace - std::chrono::milliseconds(200));
  state_->CheckDeadlines(now_ + grace - std::chrono::milliseconds(100));
  EXPECT_EQ(state_->Status(now_).world_size(), 3) << "within the grace a rank a step behind could still report";
  beat(now_ + grace - std::chrono::milliseconds(50));
  state_->CheckDeadlines(now_ + grace);
  const v1::ClusterStatusResponse s = state_->Status(now_ + grace);
  ASSERT_EQ(s.world_size(), 1) << "both lost together";
  EXPECT_EQ(s.workers(0).pid(), 1000);
  for (int r : {1, 2}) {
    const v1::CoordinatorMessage* bye = Last(*links_[r], v1::CoordinatorMessage::kShutdown);
    ASSERT_NE(bye, nullptr);
    EXPECT_NE(bye->shutdown().reason().find("hung with 1 other rank"), std::string::npos) << bye->shutdown().reason();
  }
  // Their sequences continue on rank 0.
  EXPECT_NE(AdmitOf(*links_[0], sequence_[1]), nullptr);
  EXPECT_NE(AdmitOf(*links_[0], sequence_[2]), nullptr);
}

TEST_F(ElasticStateTest, MpiAndGpuClustersFailTheirRequestsInstead) {
  for (const auto& [transport, device] : {std::pair{"mpi", "cpu"}, std::pair{"ucx", "cuda:0"}}) {
    transport_ = transport;
    device_ = device;
    world_ = 3;
    Form({4096, 4096, 4096});
    auto c = Submit(4, 8);
    state_->Lose(RankOf(*c), generation_, "killed");
    EXPECT_EQ(state_->state(), "degraded") << transport << " " << device;
    const RequestChannel::News news = Drain(*c);
    EXPECT_TRUE(news.finished);
    EXPECT_TRUE(absl::IsUnavailable(news.status)) << news.status;
    EXPECT_FALSE(state_->Status(now_).elastic());
  }
}

}  // namespace
}  // namespace daedalus
