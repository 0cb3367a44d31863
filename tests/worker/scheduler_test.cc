// The scheduler as tables of steps: for each step, the slices it schedules, written
// "A[0,4)" (sequence A computes tokens 0..3), with "d" for generated tokens (decode form) and
// "*" when the slice samples the next token; "+X" and "-X" for admissions and preemptions.
// A fake model stands in: sampling appends token 7, and a sequence ends after max_new_tokens.
#include "worker/scheduler.h"

#include <gtest/gtest.h>

#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/presets.h"

namespace daedalus {
namespace {

class SchedulerTest : public ::testing::Test {
 protected:
  void Make(int64_t pool_tokens, SchedulerOptions options, bool prefix_caching = false) {
    KvCacheOptions o;
    o.page_size = 4;
    o.max_tokens = pool_tokens;
    o.host_pool = false;
    o.prefix_caching = prefix_caching;
    cache_ = std::make_unique<PagedKvCache>(*PresetConfig("tiny"), o);
    scheduler_ = std::make_unique<Scheduler>(*cache_, options);
  }
  // Queues sequence `name` (A, B, ...) with this prompt.
  void Add(std::vector<int32_t> prompt, int64_t max_new) {
    auto seq = std::make_unique<Sequence>();
    seq->index = next_++;
    seq->request.prompt_ids = prompt;
    seq->request.max_new_tokens = max_new;
    seq->tokens = std::move(prompt);
    scheduler_->Add(std::move(seq));
  }
  static std::vector<int32_t> Tokens(int n, int from) {
    std::vector<int32_t> t(n);
    std::iota(t.begin(), t.end(), from);
    return t;
  }
  static std::string Name(const Sequence& s) { return std::string(1, static_cast<char>('A' + s.index)); }
  std::set<int64_t> Running() const {
    std::set<int64_t> out;
    for (const auto& s : scheduler_->running()) out.insert(s->index);
    return out;
  }
  // One step: schedule, "compute", sample, finish. Returns the step's line.
  std::string Step() {
    const std::set<int64_t> before = Running();
    const std::vector<ScheduledSlice> slices = scheduler_->Schedule();
    std::vector<std::string> parts;
    const std::set<int64_t> after = Running();
    for (int64_t i : after)
      if (!before.contains(i)) parts.push_back(absl::StrCat("+", std::string(1, static_cast<char>('A' + i))));
    for (int64_t i : before)
      if (!after.contains(i)) parts.push_back(absl::StrCat("-", std::string(1, static_cast<char>('A' + i))));
    for (const ScheduledSlice& s : slices) {
      parts.push_back(absl::StrCat(Name(*s.seq), "[", s.start, ",", s.start + s.n, ")", s.decode ? "d" : "",
                                   s.samples ? "*" : ""));
    }
    scheduler_->Computed(slices);
    for (const ScheduledSlice& s : slices) {
      Sequence& seq = *s.seq;
      if (seq.to_compute() > 0) continue;
      if (s.samples) seq.tokens.push_back(7);
      if (seq.generated() >= seq.request.max_new_tokens) seq.done = true;
    }
    scheduler_->Retire();
    return absl::StrJoin(parts, " ");
  }
  void ExpectSteps(const std::vector<std::string>& table) {
    for (size_t i = 0; i < table.size(); ++i) ASSERT_EQ(Step(), table[i]) << "step " << i;
    EXPECT_EQ(scheduler_->pending(), 0);
    EXPECT_EQ(cache_->free_pages(), cache_->total_pages()) << "pages leaked";
  }

  std::unique_ptr<PagedKvCache> cache_;
  std::unique_ptr<Scheduler> scheduler_;
  int64_t next_ = 0;
};

TEST_F(SchedulerTest, DecodeFirstThenPrefillChunksWithinTheBudget) {
  Make(64, SchedulerOptions{8, 4, 16});
  Add(Tokens(10, 0), 2);  // A
  Add(Tokens(3, 50), 2);  // B
  ExpectSteps({
      "+A +B A[0,4) B[0,3)*",  // chunks of at most 4; B's prompt ends: it samples
      "B[3,4)d* A[4,8)",       // B's decode token first; B has its 2 tokens and ends
      "A[8,10)*",
      "A[10,11)d*",
  });
}

TEST_F(SchedulerTest, AdmissionIsFirstComeFirstServedAndLeavesRoomToGrow) {
  // 6 pages of 4. A (8 tokens, 13 at the end) takes 2 pages and will grow; B (12 tokens, 13 at
  // the end) takes 3 with one spare for A. C needs 1 page but spares for A and B: it waits, and
  // so does D behind it. Once B ends, C and D come in; A takes its third page as it decodes.
  Make(24, SchedulerOptions{64, 64, 16});
  Add(Tokens(8, 0), 5);    // A
  Add(Tokens(12, 20), 1);  // B
  Add(Tokens(1, 40), 1);   // C
  Add(Tokens(1, 60), 1);   // D
  ExpectSteps({
      "+A +B A[0,8)* B[0,12)*",
      "+C +D A[8,9)d* C[0,1)* D[0,1)*",
      "A[9,10)d*",
      "A[10,11)d*",
      "A[11,12)d*",
  });
}

TEST_F(SchedulerTest, ASequenceThatWillNotGrowNeedsNoSparePage) {
  // 4 pages. A (7 tokens, 8 at the end) holds both pages it will ever need, so B may take the
  // last two.
  Make(16, SchedulerOptions{64, 64, 16});
  Add(Tokens(7, 0), 1);
  Add(Tokens(8, 20), 1);
  ExpectSteps({"+A +B A[0,7)* B[0,8)*"});
}

TEST_F(SchedulerTest, MaxRunningCapsTheBatch) {
  Make(64, SchedulerOptions{64, 64, 2});
  Add(Tokens(2, 0), 2);
  Add(Tokens(2, 10), 1);
  Add(Tokens(2, 20), 1);
  ExpectSteps({
      "+A +B A[0,2)* B[0,2)*",
      "+C A[2,3)d* C[0,2)*",
  });
}

TEST_F(SchedulerTest, TheNewestSequenceIsPreemptedWhenThePoolRunsOutAndComputedAgain) {
  // 5 pages of 4. A (6 tokens) and B (6 tokens) take 2 pages each, one spare. A grows into the
  // spare at its 9th token; B needs a page for its 9th and none is left: B, the newest, is
  // preempted and waits. When A ends, B comes back: its prompt in prefill form, then its 3
  // generated tokens in decode form, then it decodes on, having lost nothing.
  Make(20, SchedulerOptions{64, 64, 16});
  Add(Tokens(6, 0), 8);   // A: 14 tokens at the end (4 pages)
  Add(Tokens(6, 10), 4);  // B: 10 tokens at the end (3 pages)
  ExpectSteps({
      "+A +B A[0,6)* B[0,6)*",
      "A[6,7)d* B[6,7)d*",
      "A[7,8)d* B[7,8)d*",
      "-B A[8,9)d*",  // A takes the last free page; B cannot grow
      "A[9,10)d*",
      "A[10,11)d*",
      "A[11,12)d*",
      "A[12,13)d*",         // A has its 8 tokens and ends
      "+B B[0,6)",          // B again: the prompt first...
      "B[6,9)d*",           // ...then its generated tokens, in decode form, sampling the next
  });
  EXPECT_EQ(scheduler_->preemptions(), 1);
  EXPECT_EQ(scheduler_->prompt_tokens(), 12);  // B's prompt counted once
}

TEST_F(SchedulerTest, APrefixBeingComputedIsWaitedForNotComputedTwice) {
  Make(256, SchedulerOptions{64, 4, 16}, /*prefix_caching=*/true);
  std::vector<int32_t> shared = Tokens(8, 0);  // two pages
  std::vector<int32_t> a = shared, b = shared;
  a.insert(a.end(), {100, 101, 102});
  b.insert(b.end(), {200, 201});
  Add(a, 1);               // A computes the shared pages, 4 tokens a step
  Add(b, 1);               // B waits for them, page by page
  Add(Tokens(3, 50), 1);   // C passes B meanwhile
  ExpectSteps({
      "+A +C A[0,4) C[0,3)*",   // B's first page is A's, being computed: B waits, C passes
      "A[4,8)",                 // A's first page is cached, its second is still being computed
      "+B A[8,11)* B[8,10)*",   // both cached: B computes only its own tokens
  });
  EXPECT_EQ(scheduler_->prompt_tokens_cached(), 8);
}

}  // namespace
}  // namespace daedalus
