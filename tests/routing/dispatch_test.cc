// Dispatch and combine over the local transport. Every row's payload encodes its source rank,
// token and column, so a misrouted or misplaced row names itself.
#include "routing/dispatch.h"

#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace daedalus {
namespace {

constexpr int64_t kHidden = 8;

float Payload(int rank, int64_t token, int64_t column) {
  return static_cast<float>(rank * 100000 + token * 10 + column);  // exact in float
}

struct Case {
  int world;
  int n_experts, topk, redundant;
  std::vector<int64_t> tokens;  // per rank
  std::string routing;          // "random" | "one-expert"
};

// Expert ids [tokens, topk], distinct and ascending per token.
std::vector<int32_t> Route(const Case& c, int rank, int64_t n) {
  std::mt19937 rng(rank * 7919 + static_cast<unsigned>(n));
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int32_t> all(c.n_experts);
    for (int e = 0; e < c.n_experts; ++e) all[e] = e;
    if (c.routing == "random") std::shuffle(all.begin(), all.end(), rng);
    std::sort(all.begin(), all.begin() + c.topk);
    ids.insert(ids.end(), all.begin(), all.begin() + c.topk);
  }
  return ids;
}

void RunCase(const Case& c) {
  auto placement = ComputePlacement(c.n_experts, c.world, c.redundant, {});
  ASSERT_TRUE(placement.ok()) << placement.status();
  auto transports = MakeLocalTransports(c.world);
  std::vector<std::string> errors(c.world);
  std::vector<int64_t> received_rows(c.world, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < c.world; ++r) {
    threads.emplace_back([&, r] {
      auto fail = [&](const std::string& e) { errors[r] += e + "\n"; };
      ExpertExchange exchange(*transports[r], *placement, kHidden, c.n_experts);
      const int64_t n = c.tokens[r];
      std::vector<float> x(n * kHidden);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t j = 0; j < kHidden; ++j) x[t * kHidden + j] = Payload(r, t, j);
      const std::vector<int32_t> ids = Route(c, r, n);
      ReceivedRows rows;
      absl::Status s = exchange.Dispatch(x.data(), n, c.topk, ids.data(), "test", rows);
      if (!s.ok()) return fail(std::string(s.message()));
      received_rows[r] = rows.rows();
      // Each row: held here, grouped by expert, payload from the rank and token its header names;
      // the "expert" output (payload × (expert + 1)) goes where combine sends it from.
      const std::vector<float*> out = exchange.CombineOutputs(rows);
      for (int64_t i = 0; i < rows.rows(); ++i) {
        const RowHeader& h = rows.headers[i];
        if (!(placement->Holds(r, h.expert))) fail(absl::StrCat("row for expert ", h.expert, " on rank ", r));
        if (i < rows.expert_begin[h.expert] || i >= rows.expert_begin[h.expert + 1]) fail("row outside its expert's group");
        for (int64_t j = 0; j < kHidden; ++j) {
          const float want = Payload(h.source_rank, h.slot / c.topk, j);
          if (rows.x[i][j] != want) {
            fail(absl::StrCat("rank ", r, " row ", i, " says rank ", h.source_rank, " slot ", h.slot, " but carries ",
                              rows.x[i][j]));
          }
          out[i][j] = rows.x[i][j] * static_cast<float>(h.expert + 1);
        }
      }
      std::vector<const float*> slots;
      s = exchange.Combine("test", slots);
      if (!s.ok()) return fail(std::string(s.message()));
      if (static_cast<int64_t>(slots.size()) != n * c.topk) return fail("wrong number of slots back");
      for (int64_t slot = 0; slot < n * c.topk; ++slot)
        for (int64_t j = 0; j < kHidden; ++j)
          if (slots[slot][j] != Payload(r, slot / c.topk, j) * static_cast<float>(ids[slot] + 1))
            fail(absl::StrCat("rank ", r, " slot ", slot, " came back wrong"));
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < c.world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  int64_t sent = 0, received = 0;
  for (int r = 0; r < c.world; ++r) {
    sent += c.tokens[r] * c.topk;
    received += received_rows[r];
  }
  EXPECT_EQ(sent, received);
}

TEST(ExpertExchange, RandomRoutingOverWorlds) {
  for (int world : {1, 2, 3, 5}) {
    std::vector<int64_t> tokens;
    for (int r = 0; r < world; ++r) tokens.push_back(3 + 4 * r);
    RunCase({world, 16, 4, 0, tokens, "random"});
  }
}

TEST(ExpertExchange, RanksWithNoTokensStillTakePart) {
  RunCase({4, 16, 4, 0, {0, 9, 0, 2}, "random"});
  RunCase({3, 16, 4, 0, {0, 0, 0}, "random"});
}

TEST(ExpertExchange, EveryTokenToTheSameExperts) {
  RunCase({3, 16, 2, 0, {20, 7, 13}, "one-expert"});  // experts 0 and 1 take everything
}

TEST(ExpertExchange, EveryExpertReplicatedEverywhere) {
  RunCase({3, 8, 3, 16, {11, 5, 8}, "random"});  // 8 experts × 3 ranks: every rank holds all
}

}  // namespace
}  // namespace daedalus
