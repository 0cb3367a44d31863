// Prefix-aware routing: fake workers report the page names a real PagedKvCache takes and drops,
// and requests must land on the worker holding their longest cached prefix, unless it lacks KV
// or is busier than the least busy worker by the slack; hit rates and cached tokens reach status
// and the request.
#include <gtest/gtest.h>

#include <numeric>

#include "tests/coordinator/fake_cluster.h"
#include "worker/kv_cache.h"

namespace daedalus {
namespace {

class PrefixRoutingTest : public ClusterStateTest {
 protected:
  void FormWithCaches(std::vector<int64_t> capacities, CoordinatorOptions options = {}) {
    prefix_caching_ = true;
    Form(capacities, options);
    caches_.clear();
    for (int64_t capacity : capacities) {
      KvCacheOptions o;
      o.page_size = 64;
      o.max_tokens = capacity;
      o.host_pool = false;
      o.prefix_caching = true;
      o.log_names = true;
      caches_.push_back(std::make_unique<PagedKvCache>(config_, o));
    }
  }
  // Worker `rank` computes `tokens` (its full pages become cached) and reports the names its
  // cache took and dropped, with the running totals of its prompt tokens.
  void Compute(int rank, const std::vector<int32_t>& tokens, int64_t cached = 0) {
    PagedKvCache& cache = *caches_[rank];
    PagedKvCache::PageTable pages;
    PagedKvCache::PrefixChain chain;
    cache.MatchPrefix(tokens, static_cast<int64_t>(tokens.size()), pages, chain);
    ASSERT_TRUE(cache.Reserve(pages, static_cast<int64_t>(tokens.size())).ok());
    cache.Publish(pages, tokens, static_cast<int64_t>(tokens.size()), chain);
    cache.Release(pages);
    Report(rank, static_cast<int64_t>(tokens.size()), cached);
  }
  void Report(int rank, int64_t prompt_tokens = 0, int64_t cached = 0) {
    std::vector<uint64_t> removed, added;
    caches_[rank]->TakeNameChanges(removed, added);
    v1::StepEvents e;
    *e.mutable_prefix_pages_removed() = {removed.begin(), removed.end()};
    *e.mutable_prefix_pages_added() = {added.begin(), added.end()};
    prompt_[rank] += prompt_tokens;
    cached_[rank] += cached;
    e.set_prompt_tokens(prompt_[rank]);
    e.set_prompt_tokens_cached(cached_[rank]);
    e.set_kv_evictions(caches_[rank]->evictions());
    state_->OnEvents(rank, generation_, e, now_);
  }
  std::shared_ptr<RequestChannel> SubmitIds(const std::vector<int32_t>& prompt, int max_new = 8) {
    auto s = state_->Submit(Request(prompt, max_new), now_ + std::chrono::seconds(30), now_);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : nullptr;
  }
  // The worker's first token for the sequence, saying how many prompt tokens were cached.
  void FirstToken(int rank, RequestChannel& channel, int64_t cached) {
    v1::StepEvents e;
    v1::TokenEvent* t = e.add_tokens();
    t->set_sequence(channel.sequence());
    t->set_token_id(1);
    t->set_cached_tokens(cached);
    state_->OnEvents(rank, generation_, e, now_);
  }
  // `n` tokens starting at `from`, counting up: distinct prompts share nothing.
  static std::vector<int32_t> Tokens(int n, int from) {
    std::vector<int32_t> t(n);
    std::iota(t.begin(), t.end(), from);
    for (int32_t& v : t) v %= 1000;
    return t;
  }
  static std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }

  std::vector<std::unique_ptr<PagedKvCache>> caches_;
  int64_t prompt_[2] = {0, 0}, cached_[2] = {0, 0};
};

TEST_F(PrefixRoutingTest, RequestSharingAPrefixLandsOnTheWorkerHoldingIt) {
  FormWithCaches({2048, 1024});  // by free KV alone, everything goes to rank 0
  const std::vector<int32_t> system = Tokens(256, 0);  // four full pages
  Compute(1, Concat(system, Tokens(40, 500)));
  // Rows: a prompt, the rank it lands on. The holder wins over the roomier worker for any
  // prompt that starts with at least one of its pages; others go by free KV.
  struct Row {
    std::vector<int32_t> prompt;
    int rank;
  };
  const std::vector<Row> table = {
      {Concat(system, Tokens(30, 700)), 1},                   // all four pages held
      {Concat(Tokens(64, 0), Tokens(100, 900)), 1},           // the first page only
      {Tokens(300, 300), 0},                                  // nothing held
      {Concat(Tokens(63, 0), Tokens(100, 900)), 0},           // shares less than a page
      {system, 1},                                            // prompt = held pages: three usable
      {Tokens(64, 0), 0},                                     // one page, but its last token must be computed
  };
  for (size_t i = 0; i < table.size(); ++i) {
    auto channel = SubmitIds(table[i].prompt);
    EXPECT_EQ(RankOf(*channel), table[i].rank) << "row " << i;
    state_->Cancel(channel->sequence());  // keep the free KV as it was
  }
  const v1::ClusterStatusResponse status = state_->Status(now_);
  EXPECT_EQ(status.workers(1).prefix_routed(), 3);
  EXPECT_EQ(status.workers(0).prefix_routed(), 0);
  EXPECT_EQ(status.workers(1).cached_pages(), 4);
  EXPECT_TRUE(status.workers(1).prefix_caching());
}

TEST_F(PrefixRoutingTest, PromptsBeingComputedAttractTheirFollowersBeforeAnyReport) {
  FormWithCaches({2048, 2048});
  const std::vector<int32_t> system = Tokens(128, 0);
  // Neither worker has reported anything: the first request goes by free KV (rank 0), and
  // the next ones with its prefix follow it although rank 1 is now the roomier.
  auto first = SubmitIds(Concat(system, Tokens(10, 400)));
  ASSERT_EQ(RankOf(*first), 0);
  auto second = SubmitIds(Concat(system, Tokens(10, 500)));
  EXPECT_EQ(RankOf(*second), 0);
  // The first token comes back; its pages are now what the worker reports. Here the worker
  // reports none (say it evicted them at once): nothing pending remains, so the next request
  // sharing the prefix goes by free KV again... once `second` has its first token too.
  FirstToken(0, *first, 0);
  FirstToken(0, *second, 0);
  auto third = SubmitIds(Concat(system, Tokens(10, 600)));
  EXPECT_EQ(RankOf(*third), 1);
}

TEST_F(PrefixRoutingTest, FinishedOrCancelledPromptsStopAttracting) {
  FormWithCaches({2048, 2048});
  const std::vector<int32_t> system = Tokens(128, 0);
  auto first = SubmitIds(Concat(system, Tokens(10, 400)));
  ASSERT_EQ(RankOf(*first), 0);
  state_->Cancel(first->sequence());  // never computed: its pages never got cached
  auto heavy = SubmitIds(Tokens(1000, 100), 24);  // rank 0 (a tie goes to the lower rank)
  ASSERT_EQ(RankOf(*heavy), 0);
  auto next = SubmitIds(Concat(system, Tokens(10, 500)));
  EXPECT_EQ(RankOf(*next), 1);
}

TEST_F(PrefixRoutingTest, NewPrefixesSpreadOverIdleWorkers) {
  FormWithCaches({2048, 2048});
  Compute(0, Tokens(128, 0));
  // Equal free KV, nobody running: a prompt nobody holds goes where fewer pages are cached.
  auto other = SubmitIds(Tokens(200, 300));
  EXPECT_EQ(RankOf(*other), 1);
}

TEST_F(PrefixRoutingTest, ABusyOrFullHolderIsSkipped) {
  CoordinatorOptions options;
  options.prefix_route_slack = 2;
  FormWithCaches({2048, 1024}, options);
  const std::vector<int32_t> system = Tokens(128, 0);
  Compute(1, system);
  // Rank 1 holds the prefix: it takes requests until it runs `slack` more than rank 0.
  auto a = SubmitIds(Concat(system, Tokens(10, 400)));
  auto b = SubmitIds(Concat(system, Tokens(10, 500)));
  auto c = SubmitIds(Concat(system, Tokens(10, 600)));
  EXPECT_EQ(RankOf(*a), 1);
  EXPECT_EQ(RankOf(*b), 1);
  EXPECT_EQ(RankOf(*c), 0);  // rank 1 runs 2, rank 0 none: over the slack
  // Idle again, but without room for the request (1,152 tokens of pages, 1,024 on rank 1):
  // the request goes by free KV.
  for (auto& channel : {a, b, c}) state_->Cancel(channel->sequence());
  auto big = SubmitIds(Concat(system, Tokens(1000, 700)), 8);
  EXPECT_EQ(RankOf(*big), 0);
}

TEST_F(PrefixRoutingTest, EvictedPagesStopAttractingAndStatusShowsHitRates) {
  FormWithCaches({2048, 256});  // rank 1's cache holds four pages
  const std::vector<int32_t> system = Tokens(128, 0);
  Compute(1, system);
  auto held = SubmitIds(Concat(system, Tokens(10, 400)));
  ASSERT_EQ(RankOf(*held), 1);
  FirstToken(1, *held, 128);
  EXPECT_EQ(held->cached_tokens(), 128);
  Finish(1, held->sequence(), "length");
  Compute(1, Concat(system, Tokens(10, 400)), /*cached=*/128);
  // Rank 1 fills its cache with another prompt: the system prompt's pages are evicted, and
  // reported as dropped.
  Compute(1, Tokens(256, 600));
  EXPECT_EQ(caches_[1]->evictions(), 2);
  auto after = SubmitIds(Concat(system, Tokens(10, 500)));
  EXPECT_EQ(RankOf(*after), 0);
  const v1::ClusterStatusResponse status = state_->Status(now_);
  EXPECT_EQ(status.workers(1).prompt_tokens(), 128 + 138 + 256);
  EXPECT_EQ(status.workers(1).prompt_tokens_cached(), 128);
  EXPECT_EQ(status.workers(1).kv_evictions(), 2);
  EXPECT_EQ(status.workers(1).cached_pages(), 4);
  // The same figures reach /metrics.
  const std::string metrics = metrics_.Render(status);
  EXPECT_NE(metrics.find("daedalus_prompt_tokens_cached_total{rank=\"1\"} 128\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("daedalus_kv_evictions_total{rank=\"1\"} 2\n"), std::string::npos);
}

TEST_F(PrefixRoutingTest, WorkersWithoutPrefixCachingAreRoutedByFreeKvOnly) {
  Form({2048, 1024});  // registered with prefix caching off
  const std::vector<int32_t> prompt = Tokens(200, 0);
  auto first = SubmitIds(prompt);
  auto second = SubmitIds(prompt);
  EXPECT_EQ(RankOf(*first), 0);
  EXPECT_EQ(RankOf(*second), 0);  // 1792 free vs 1024: free KV, not a pending prefix
  auto third = SubmitIds(prompt, 1000);
  EXPECT_EQ(RankOf(*third), 0);
  auto fourth = SubmitIds(prompt);
  EXPECT_EQ(RankOf(*fourth), 1);
  EXPECT_FALSE(state_->Status(now_).workers(0).prefix_caching());
}

}  // namespace
}  // namespace daedalus
