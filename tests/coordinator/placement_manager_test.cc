// The coordinator's placement manager as a table: what it places from (nothing measured: the
// initial load or uniform; then the measured load), how reports add up, and when a rebalance
// is adopted (a lower imbalance by the gain) and versioned.
#include "coordinator/placement_manager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "worker/presets.h"

namespace daedalus {
namespace {

// Every expert of every MoE layer on at least one rank, each rank's list free of repeats.
void ExpectCovers(const v1::Placement& p, const ModelConfig& c, int world) {
  ASSERT_EQ(p.layers_size(), c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    ASSERT_EQ(p.layers(l).experts_on_size(), world) << l;
    std::vector<int> copies(c.n_routed_experts, 0);
    for (const auto& on : p.layers(l).experts_on()) {
      std::set<int32_t> mine(on.experts().begin(), on.experts().end());
      EXPECT_EQ(static_cast<int>(mine.size()), on.experts_size()) << "layer " << l << ": a rank lists an expert twice";
      for (int32_t e : on.experts()) ++copies[e];
    }
    for (int64_t e = 0; e < c.n_routed_experts; ++e) EXPECT_GE(copies[e], 1) << "layer " << l << " expert " << e;
  }
}

// One report's counts: expert `hot` of every MoE layer gets `hot_tokens`, the others `cold`.
google::protobuf::RepeatedField<int64_t> Report(const ModelConfig& c, int hot, int64_t hot_tokens, int64_t cold) {
  google::protobuf::RepeatedField<int64_t> out;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    for (int64_t e = 0; e < c.n_routed_experts; ++e) out.Add(e == hot ? hot_tokens : cold);
  }
  return out;
}

TEST(PlacementManager, StepsOfATable) {
  const ModelConfig c = *PresetConfig("tiny");
  PlacementOptions o;
  o.world_size = 2;
  o.redundant_experts = 2;
  PlacementManager m(c, o);
  struct Step {
    const char* what;
    int hot;            // -1: no report
    int64_t hot_tokens, cold;
    bool reset;
    bool expect_update;
    int64_t expect_version;
  };
  const Step steps[] = {
      {"start: uniform, version 0, nothing to gain", -1, 0, 0, false, false, 0},
      {"an even load: nothing to gain", 3, 10, 10, false, false, 0},
      {"expert 11 takes half: a better placement, version 1", 11, 300, 10, false, true, 1},
      {"the same again: no better one", 11, 300, 10, false, false, 1},
      {"expert 2 grows hotter still: version 2", 2, 5000, 0, false, true, 2},
      {"a new generation: version 0, placed from what was measured", -1, 0, 0, true, false, 0},
  };
  for (const Step& s : steps) {
    SCOPED_TRACE(s.what);
    if (s.hot >= 0) m.AddLoad(Report(c, s.hot, s.hot_tokens, s.cold));
    if (s.reset) m.Reset();
    const double before = m.Imbalance();
    const auto update = m.Rebalance();
    EXPECT_EQ(update.has_value(), s.expect_update);
    EXPECT_EQ(m.version(), s.expect_version);
    if (update) {
      EXPECT_EQ(update->version(), m.version());
      EXPECT_EQ(update->placement().SerializeAsString(), m.placement().SerializeAsString());
      EXPECT_LT(m.Imbalance(), before * o.rebalance_gain);
    } else {
      EXPECT_DOUBLE_EQ(m.Imbalance(), before);  // nothing adopted: the placement stands
    }
    ExpectCovers(m.placement(), c, o.world_size);
  }
  // Reports add up per layer and expert.
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.is_moe_layer(l);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) {
      EXPECT_TRUE(m.measured()[l].empty());
      continue;
    }
    EXPECT_EQ(m.measured()[l][11], 10 + 300 + 300);
    EXPECT_EQ(m.measured()[l][2], 10 + 10 + 10 + 5000);
    EXPECT_EQ(m.measured()[l][3], 10 + 10 + 10);
  }
  EXPECT_GT(moe_layers, 0);
}

TEST(PlacementManager, PlacesFromTheInitialLoadUntilSomethingIsMeasured) {
  const ModelConfig c = *PresetConfig("tiny");
  PlacementOptions uniform;
  uniform.world_size = 2;
  uniform.redundant_experts = 2;
  PlacementOptions skewed = uniform;
  skewed.initial_load.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    skewed.initial_load[l].assign(c.n_routed_experts, 1);
    skewed.initial_load[l][5] = 1000;
  }
  PlacementManager a(c, uniform), b(c, skewed);
  EXPECT_NE(a.placement().SerializeAsString(), b.placement().SerializeAsString());  // the hot expert got replicas
  ExpectCovers(b.placement(), c, 2);
  // Expert 5 is held by both ranks in the skewed placement (a replica), in every MoE layer.
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    int holders = 0;
    for (const auto& on : b.placement().layers(l).experts_on())
      holders += std::count(on.experts().begin(), on.experts().end(), 5);
    EXPECT_EQ(holders, 2) << l;
  }
  // Once a load is measured, it is what counts: under an even one the placement ends balanced.
  b.AddLoad(Report(c, 0, 10, 10));
  b.Rebalance();
  EXPECT_LT(b.Imbalance(), 1.1);
}

TEST(PlacementManager, ShrinksAroundALostRankAndGrowsByAnEmptyOne) {
  // 3 ranks, 2 redundant replicas per layer: removing rank 1 keeps every expert that had a
  // replica where it was and moves only those rank 1 alone held, counting them; a new rank
  // starts empty, and a rebalance (the empty rank is the imbalance) spreads experts onto it.
  const ModelConfig c = *PresetConfig("tiny");
  PlacementOptions o;
  o.world_size = 3;
  o.redundant_experts = 2;
  PlacementManager m(c, o);
  m.AddLoad(Report(c, 5, 900, 10));
  ASSERT_TRUE(m.Rebalance().has_value());
  const v1::Placement before = m.placement();
  int64_t alone = 0;  // experts only rank 1 held, over the MoE layers
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    for (int32_t e : before.layers(l).experts_on(1).experts()) {
      alone += std::none_of(before.layers(l).experts_on().begin(), before.layers(l).experts_on().end(), [&](const auto& on) {
        return &on != &before.layers(l).experts_on(1) && std::count(on.experts().begin(), on.experts().end(), e) > 0;
      });
    }
  }
  const int64_t version = m.version();
  EXPECT_EQ(m.RemoveRank(1), alone);
  EXPECT_GT(alone, 0);
  EXPECT_EQ(m.world_size(), 2);
  EXPECT_EQ(m.version(), version + 1);
  ExpectCovers(m.placement(), c, 2);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {  // what ranks 0 and 2 held, they still hold
    if (!c.is_moe_layer(l)) continue;
    for (int old : {0, 2}) {
      const auto& now = m.placement().layers(l).experts_on(old == 0 ? 0 : 1).experts();
      for (int32_t e : before.layers(l).experts_on(old).experts()) EXPECT_GT(std::count(now.begin(), now.end(), e), 0) << l;
    }
  }
  m.AddRank();
  EXPECT_EQ(m.world_size(), 3);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (c.is_moe_layer(l)) {
      EXPECT_EQ(m.placement().layers(l).experts_on(2).experts_size(), 0) << l;
    }
  }
  auto update = m.Rebalance();
  ASSERT_TRUE(update.has_value());
  ExpectCovers(update->placement(), c, 3);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (c.is_moe_layer(l)) {
      EXPECT_GT(update->placement().layers(l).experts_on(2).experts_size(), 0) << l;
    }
  }
  EXPECT_FALSE(m.Rebalance().has_value()) << "the same placement again is not an update";
}

TEST(PlacementManager, FillRankMovesExpertsOntoTheNewRankOnlyFromTheOthers) {
  // A joiner's share comes from the ranks that serve the most load; the others only give
  // experts up (they read nothing from the checkpoint), and every expert stays placed.
  const ModelConfig c = *PresetConfig("tiny");
  for (bool measured : {false, true}) {
    PlacementOptions o;
    o.world_size = 2;
    o.redundant_experts = 2;
    PlacementManager m(c, o);
    if (measured) m.AddLoad(Report(c, 3, 5000, 10));
    const v1::Placement before = m.placement();
    m.AddRank();
    const int64_t version = m.version();
    auto update = m.FillRank();
    ASSERT_TRUE(update.has_value()) << measured;
    EXPECT_EQ(update->version(), version + 1);
    ExpectCovers(update->placement(), c, 3);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      if (!c.is_moe_layer(l)) continue;
      const auto& now = update->placement().layers(l);
      int64_t slots = 0;
      for (const auto& on : now.experts_on()) slots += on.experts_size();
      EXPECT_EQ(now.experts_on(2).experts_size(), slots / 3) << "layer " << l;
      for (int r : {0, 1}) {
        const auto& had = before.layers(l).experts_on(r).experts();
        for (int32_t e : now.experts_on(r).experts()) {
          EXPECT_GT(std::count(had.begin(), had.end(), e), 0) << "layer " << l << ": rank " << r << " gained expert " << e;
        }
      }
    }
    EXPECT_FALSE(m.FillRank().has_value()) << "it holds its share already";
  }
}

}  // namespace
}  // namespace daedalus
