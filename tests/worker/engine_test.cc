// Properties of the engine that a broken cache, attention form or batcher would violate.
#include "worker/engine.h"

#include <cmath>
#include <map>
#include <cstring>
#include <numeric>

#include <omp.h>

#include "core/kv_row.h"
#include "gtest/gtest.h"
#include "tests/worker/test_models.h"

namespace daedalus {
namespace {

using testing::TinyModel;

std::vector<int32_t> Prompt(int64_t n, int32_t salt) {
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 37 + salt * 101 + 3) % 512);
  return ids;
}

Request Greedy(std::vector<int32_t> prompt, int64_t new_tokens, bool logits = true) {
  Request r;
  r.prompt_ids = std::move(prompt);
  r.max_new_tokens = new_tokens;
  r.stop_at_eos = false;
  r.want_prompt_logits = logits;
  return r;
}

std::vector<Result> RunAll(const ModelWeights& w, EngineOptions options, const std::vector<Request>& requests) {
  Engine engine(w, options);
  for (const Request& r : requests) {
    auto added = engine.Add(r);
    EXPECT_TRUE(added.ok()) << added.status();
  }
  auto results = engine.RunToCompletion();
  // Every page comes back.
  EXPECT_EQ(engine.cache().free_pages(), engine.cache().total_pages());
  return results;
}

double MaxAbsDiff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    for (size_t j = 0; j < a[i].size(); ++j) m = std::max(m, std::fabs(static_cast<double>(a[i][j]) - b[i][j]));
  return m;
}

EngineOptions F32Cache() {
  EngineOptions o;
  o.kv.dtype = DType::kF32;
  o.kv.page_size = 16;
  return o;
}

// Logits are O(5) for tiny; float32 re-association of the same sums stays well below 1e-3.
constexpr double kTol = 1e-3;

// Also with a value head of 40: the naive form's values go in slices of AxpyRowsColumns (on avx2
// 16 columns: two whole slices and one of 8).
TEST(Engine, AbsorbedAndNaiveAttentionAgree) {
  for (const auto& [yarn, v_head_dim] : {std::pair{false, 0}, std::pair{true, 0}, std::pair{false, 40}}) {
    const ModelWeights& w = TinyModel(DType::kF32, yarn, 0, v_head_dim);
    EngineOptions naive = F32Cache(), absorbed = F32Cache();
    naive.attention = AttentionPath::kNaive;
    absorbed.attention = AttentionPath::kAbsorbed;
    const auto a = RunAll(w, naive, {Greedy(Prompt(40, 1), 12)});
    const auto b = RunAll(w, absorbed, {Greedy(Prompt(40, 1), 12)});
    EXPECT_LT(MaxAbsDiff(a[0].prompt_logits, b[0].prompt_logits), kTol) << "yarn " << yarn << ", v_head_dim " << v_head_dim;
    EXPECT_EQ(a[0].generated_ids, b[0].generated_ids) << "yarn " << yarn << ", v_head_dim " << v_head_dim;
  }
}

TEST(Engine, AbsorbedAttentionIsBitwiseTheSameOnAnyThreadCount) {
  // One sequence splits its heads over the threads (fewer sequences than threads): each head's
  // scores and sums must not depend on which heads share its group. With 16 heads a bf16 cache's
  // scores take the transposed kernel (kernels/ops.h), whatever the size of a thread's group.
  for (const int64_t heads : {int64_t{0}, int64_t{16}}) {
    const ModelWeights& w = TinyModel(DType::kBF16, false, heads);
    EngineOptions absorbed;
    absorbed.attention = AttentionPath::kAbsorbed;
    const int threads = omp_get_max_threads();
    std::vector<Result> runs;
    for (int n : {1, 2, 3}) {
      omp_set_num_threads(n);
      runs.push_back(RunAll(w, absorbed, {Greedy(Prompt(90, 1), 12)})[0]);
    }
    omp_set_num_threads(threads);
    for (size_t i = 1; i < runs.size(); ++i) {
      EXPECT_EQ(runs[i].generated_ids, runs[0].generated_ids) << "heads " << w.config.num_attention_heads;
      ASSERT_EQ(runs[i].prompt_logits.size(), runs[0].prompt_logits.size());
      for (size_t t = 0; t < runs[0].prompt_logits.size(); ++t)
        EXPECT_EQ(runs[i].prompt_logits[t], runs[0].prompt_logits[t])
            << "heads " << w.config.num_attention_heads << ", threads " << i + 1 << ", position " << t;
    }
  }
}

// Past kSegmentRows (256) keys a token's attention runs in segments folded together: on one
// thread one after another, or spread over the threads when there are fewer tokens than threads.
// Both agree with the naive form, and bitwise with each other, whatever the threads and the batch.
void ExpectSameTokensAndLogprobs(const Result& a, const Result& b, const std::string& what) {
  EXPECT_EQ(a.generated_ids, b.generated_ids) << what;
  ASSERT_EQ(a.logprobs.size(), b.logprobs.size()) << what;
  for (size_t t = 0; t < a.logprobs.size(); ++t) {
    EXPECT_EQ(a.logprobs[t].logprob, b.logprobs[t].logprob) << what << ", token " << t;
    EXPECT_EQ(a.logprobs[t].top_logprobs, b.logprobs[t].top_logprobs) << what << ", token " << t;
  }
}

TEST(Engine, LongContextAttentionAgreesWithNaiveAndIsBitwiseTheSameOnAnyThreadsAndBatch) {
  const ModelWeights& f32 = TinyModel(DType::kF32);
  EngineOptions naive = F32Cache(), absorbed = F32Cache();
  naive.attention = AttentionPath::kNaive;
  absorbed.attention = AttentionPath::kAbsorbed;
  const auto a = RunAll(f32, naive, {Greedy(Prompt(600, 2), 8)});
  const auto b = RunAll(f32, absorbed, {Greedy(Prompt(600, 2), 8)});
  EXPECT_LT(MaxAbsDiff(a[0].prompt_logits, b[0].prompt_logits), kTol);
  EXPECT_EQ(a[0].generated_ids, b[0].generated_ids);

  Request r = Greedy(Prompt(560, 3), 10, false);
  r.logprobs = 4;
  const int threads = omp_get_max_threads();
  // Float weights and cache (no bf16 rounding after the attention to hide a changed last bit):
  // one token's segments in turn on 1 thread, spread over 2 or 3.
  std::vector<Result> runs;
  for (int n : {1, 2, 3}) {
    omp_set_num_threads(n);
    runs.push_back(RunAll(f32, F32Cache(), {r})[0]);
  }
  for (size_t i = 1; i < runs.size(); ++i)
    ExpectSameTokensAndLogprobs(runs[i], runs[0], "threads " + std::to_string(i + 1));
  // bf16 (whose products do not depend on the batch): alone, spread over the threads, against
  // four tokens a step, each token's segments in turn.
  const ModelWeights& bf16 = TinyModel(DType::kBF16);
  omp_set_num_threads(2);
  const Result alone = RunAll(bf16, EngineOptions(), {r})[0];
  const Result batched = RunAll(bf16, EngineOptions(),
                                {Greedy(Prompt(300, 4), 10, false), r, Greedy(Prompt(20, 5), 10, false),
                                 Greedy(Prompt(500, 6), 10, false)})[1];
  ExpectSameTokensAndLogprobs(batched, alone, "in a batch of four");
  // Tokens whose segments end in different windows (3 threads: 6 segments a token at a time; 1
  // and 7 here): the short one is finished, and normalised, in the first window only.
  omp_set_num_threads(3);
  Request short_one = Greedy(Prompt(20, 7), 12, false);
  short_one.logprobs = 4;
  const Result short_alone = RunAll(bf16, EngineOptions(), {short_one})[0];
  const Result beside_long =
      RunAll(bf16, EngineOptions(), {short_one, Greedy(Prompt(1700, 8), 12, false)})[0];
  omp_set_num_threads(threads);
  ExpectSameTokensAndLogprobs(beside_long, short_alone, "beside a 1,700-token context on 3 threads");
}

TEST(Engine, ProfilingChangesNoResultAndTimesEveryOp) {
  const ModelWeights& w = TinyModel(DType::kBF16);
  const ModelConfig& c = w.config;
  const std::vector<Request> requests = {Greedy(Prompt(40, 1), 8), Greedy(Prompt(23, 2), 5)};
  EngineOptions profiled;
  profiled.profile_ops = true;
  Engine engine(w, profiled);
  for (const Request& r : requests) ASSERT_TRUE(engine.Add(r).ok());
  const auto got = engine.RunToCompletion();
  const auto want = RunAll(w, EngineOptions{}, requests);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].generated_ids, want[i].generated_ids);
    EXPECT_EQ(got[i].prompt_logits, want[i].prompt_logits);
  }
  std::map<std::string, ProfilingBackend::OpTime> ops;
  for (const auto& op : engine.TakeOpTimes()) ops[op.op] = op;
  const int64_t steps = ops["Begin"].calls, moe_layers = c.num_hidden_layers - c.first_k_dense_replace;
  ASSERT_GT(steps, 0);
  // Per step and layer: q_a with kv_a, q_b and o_proj; and the gate of each MoE layer.
  EXPECT_EQ(ops["Linear"].calls, steps * (3 * c.num_hidden_layers + moe_layers));
  EXPECT_EQ(ops["LocalExperts"].calls, steps * moe_layers);
  EXPECT_EQ(ops["Mlp"].calls, steps * c.first_k_dense_replace);
  EXPECT_EQ(ops["KvWrite"].calls, steps * c.num_hidden_layers);
  // Each layer of a step attends in one form or both (prefill chunks naive, decode tokens absorbed).
  const int64_t naive = ops["MlaNaive"].calls, absorbed = ops["MlaAbsorbed"].calls, L = c.num_hidden_layers;
  EXPECT_EQ(naive % L, 0);
  EXPECT_EQ(absorbed % L, 0);
  EXPECT_LE(naive, steps * L);
  EXPECT_LE(absorbed, steps * L);
  EXPECT_GE(naive + absorbed, steps * L);
  EXPECT_GT(ops["MlaAbsorbed"].calls, 0);
  EXPECT_GT(ops["MlaNaive"].calls, 0);
  double total = 0;
  for (const auto& [name, op] : ops) {
    EXPECT_GE(op.seconds, 0) << name;
    total += op.seconds;
  }
  EXPECT_GT(total, 0);
  EXPECT_TRUE(engine.TakeOpTimes().empty());  // the totals restart
}

TEST(Engine, IncrementalDecodeEqualsFullPrefill) {
  const ModelWeights& w = TinyModel(DType::kF32);
  // Generate greedily (absorbed decode), then prefill prompt + generated in one pass: the
  // prefill's argmax at each generated position must be the token decode produced.
  const auto prompt = Prompt(9, 2);
  const auto gen = RunAll(w, F32Cache(), {Greedy(prompt, 10, false)})[0].generated_ids;
  ASSERT_EQ(gen.size(), 10u);
  std::vector<int32_t> full = prompt;
  full.insert(full.end(), gen.begin(), gen.end() - 1);
  const auto pre = RunAll(w, F32Cache(), {Greedy(full, 0)})[0];
  for (size_t i = 0; i < gen.size(); ++i) {
    const auto& row = pre.prompt_logits[prompt.size() - 1 + i];
    EXPECT_EQ(std::max_element(row.begin(), row.end()) - row.begin(), gen[i]) << "generated token " << i;
  }
  // And feeding the prompt one token per step (every step a decode-shaped slice) gives the
  // same logits as one prefill.
  EngineOptions one = F32Cache();
  one.prefill_chunk = 1;
  const auto stepwise = RunAll(w, one, {Greedy(full, 0)})[0];
  EXPECT_LT(MaxAbsDiff(stepwise.prompt_logits, pre.prompt_logits), kTol);
}

// Per latent cache format: chunking, batching and paging must not change a sequence's result.
class EngineCache : public ::testing::TestWithParam<DType> {
 protected:
  EngineOptions Options() const {
    EngineOptions o;
    o.kv.dtype = GetParam();
    return o;
  }
};

TEST_P(EngineCache, ChunkedPrefillEqualsUnchunked) {
  const ModelWeights& w = TinyModel(DType::kBF16);
  EngineOptions chunked = Options();
  chunked.prefill_chunk = 7;
  chunked.kv.page_size = 8;  // chunks straddle pages
  const auto a = RunAll(w, Options(), {Greedy(Prompt(50, 3), 8)});
  const auto b = RunAll(w, chunked, {Greedy(Prompt(50, 3), 8)});
  EXPECT_LT(MaxAbsDiff(a[0].prompt_logits, b[0].prompt_logits), kTol);
  EXPECT_EQ(a[0].generated_ids, b[0].generated_ids);
}

TEST_P(EngineCache, BatchEqualsEachAlone) {
  const ModelWeights& w = TinyModel(DType::kBF16);
  std::vector<Request> requests = {Greedy(Prompt(3, 4), 9), Greedy(Prompt(29, 5), 4), Greedy(Prompt(64, 6), 12),
                                   Greedy(Prompt(1, 7), 6)};
  EngineOptions small_steps = Options();
  small_steps.max_batch_tokens = 40;  // prefill of one overlaps decode of the others
  small_steps.prefill_chunk = 16;
  const auto together = RunAll(w, small_steps, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto alone = RunAll(w, Options(), {requests[i]});
    EXPECT_LT(MaxAbsDiff(together[i].prompt_logits, alone[0].prompt_logits), kTol) << "request " << i;
    EXPECT_EQ(together[i].generated_ids, alone[0].generated_ids) << "request " << i;
    EXPECT_EQ(together[i].generated_ids.size(), static_cast<size_t>(requests[i].max_new_tokens));
  }
}

// The last layer's feed-forward runs on the logit rows alone (a prompt's last row; none in its
// earlier chunks): each generated token's log-probabilities are bitwise those of a run that kept
// every row (its prompt logits wanted), in one prefill, in chunks, and beside another sequence.
TEST_P(EngineCache, LastLayerOnTheLogitRowsAloneChangesNoLogprobBitwise) {
  const ModelWeights& w = TinyModel(DType::kBF16);
  auto request = [](std::vector<int32_t> prompt, bool prompt_logits) {
    Request r = Greedy(std::move(prompt), 6, prompt_logits);
    r.logprobs = 4;
    return r;
  };
  const Result every_row = RunAll(w, Options(), {request(Prompt(50, 3), true)})[0];
  ASSERT_EQ(every_row.logprobs.size(), 6u);
  EngineOptions chunked = Options();
  chunked.prefill_chunk = 16;
  chunked.max_batch_tokens = 40;  // the other prompt's chunks beside this one's decode
  const std::pair<const char*, std::vector<Result>> runs[] = {
      {"one prefill", RunAll(w, Options(), {request(Prompt(50, 3), false)})},
      {"chunked, beside another", RunAll(w, chunked, {request(Prompt(50, 3), false), request(Prompt(45, 4), false)})}};
  for (const auto& [name, results] : runs) {
    const Result& r = results[0];
    EXPECT_TRUE(r.prompt_logits.empty()) << name;
    ASSERT_EQ(r.logprobs.size(), every_row.logprobs.size()) << name;
    for (size_t i = 0; i < r.logprobs.size(); ++i) {
      const TokenOut &got = r.logprobs[i], &want = every_row.logprobs[i];
      EXPECT_EQ(got.token, want.token) << name << ", token " << i;
      EXPECT_EQ(got.logprob, want.logprob) << name << ", token " << i;
      EXPECT_EQ(got.top_ids, want.top_ids) << name << ", token " << i;
      EXPECT_EQ(got.top_logprobs, want.top_logprobs) << name << ", token " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(KvDtypes, EngineCache, ::testing::Values(DType::kBF16, DType::kF8E4M3),
                         [](const ::testing::TestParamInfo<DType>& info) { return std::string(DTypeName(info.param)); });

// Relative RMS difference of two logits rows.
double RelRms(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

TEST(Engine, F32Bf16AndFp8CheckpointsAgree) {
  // The same seed's weights rounded to bf16 or fp8. Random MoE routing is discontinuous: a
  // small perturbation occasionally flips an expert and moves a position's logits a lot, so the
  // bound is on the median position (bf16 ≈ 1% typical, fp8 ≈ 6%) with every position correlated.
  const auto prompt = Prompt(48, 8);
  const auto ref = RunAll(TinyModel(DType::kF32), F32Cache(), {Greedy(prompt, 0)})[0].prompt_logits;
  for (auto [dtype, median_bound] : {std::pair{DType::kBF16, 0.03}, std::pair{DType::kF8E4M3, 0.12}}) {
    const auto got = RunAll(TinyModel(dtype), F32Cache(), {Greedy(prompt, 0)})[0].prompt_logits;
    std::vector<double> err;
    for (size_t i = 0; i < ref.size(); ++i) err.push_back(RelRms(got[i], ref[i]));
    std::sort(err.begin(), err.end());
    EXPECT_LT(err[err.size() / 2], median_bound) << DTypeName(dtype);
    EXPECT_LT(err.back(), 1.0) << DTypeName(dtype);
    EXPECT_GT(err[err.size() / 2], 0.0) << DTypeName(dtype) << ": identical logits; was the dtype honoured?";
  }
}

// Requests run in two waves on one engine (the first wave's pages are cached by the time the
// second is admitted); returns every result, in order of Add.
std::vector<Result> TwoWaves(const ModelWeights& w, EngineOptions options, const std::vector<Request>& first,
                             const std::vector<Request>& second, Engine** out = nullptr) {
  static std::unique_ptr<Engine> engine;
  engine = std::make_unique<Engine>(w, options);
  for (const Request& r : first) EXPECT_TRUE(engine->Add(r).ok());
  engine->RunToCompletion();
  for (const Request& r : second) EXPECT_TRUE(engine->Add(r).ok());
  auto results = engine->RunToCompletion();
  EXPECT_EQ(engine->cache().free_pages(), engine->cache().total_pages());  // cached pages count as free
  if (out != nullptr) *out = engine.get();
  return results;
}

TEST_P(EngineCache, PrefixCachingChangesNoTokenBitwise) {
  const ModelWeights& w = TinyModel(DType::kBF16);
  std::vector<int32_t> system = Prompt(45, 11);  // 5 whole pages of 8, and 5 tokens more
  auto with = [&](std::vector<int32_t> suffix, int32_t seed) {
    std::vector<int32_t> p = system;
    p.insert(p.end(), suffix.begin(), suffix.end());
    Request r = Greedy(p, 10, false);
    if (seed >= 0) {
      r.sampling.temperature = 0.9f;
      r.sampling.seed = static_cast<uint64_t>(seed);
    }
    return r;
  };
  const std::vector<Request> first = {with({7, 8, 9}, -1)};
  const std::vector<Request> second = {with({7, 8, 9}, -1), with({100, 200}, -1), with({7, 8, 9, 10, 11}, 5),
                                       with({}, 6), Greedy(Prompt(16, 12), 6, false)};
  EngineOptions off = Options(), on = Options();
  off.kv.page_size = on.kv.page_size = 8;
  on.kv.prefix_caching = true;
  off.max_batch_tokens = on.max_batch_tokens = 24;  // chunked prefill, decode beside it
  Engine* engine = nullptr;
  const auto a = TwoWaves(w, off, first, second);
  const auto b = TwoWaves(w, on, first, second, &engine);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].generated_ids, b[i].generated_ids) << "request " << i;
  // Whole pages only, and never a prompt's last token (its logits are needed). The repeated
  // 48-token prompt: 5 pages (its sixth would hold the last token). The 47- and 45-token ones: 5.
  // The 50-token one: 6, its sixth page (system[40, 45) + 7, 8, 9) being the first wave's. The
  // unrelated prompt: none.
  EXPECT_EQ(engine->prompt_tokens_cached(), 40 + 40 + 48 + 40);
  EXPECT_GT(engine->cache().cached_pages(), 6);
}

TEST_P(EngineCache, FollowUpTurnKeepsItsLogprobsBitwise) {
  // The second turn's prompt is the first's, its answer and two tokens more. The answer's rows
  // were computed in decode form; without the cache the second turn computes them in prefill
  // form, so only the first prompt's whole pages may be reused.
  const ModelWeights& w = TinyModel(DType::kBF16);
  for (int32_t salt : {1, 2, 3}) {
    std::vector<std::vector<float>> logprobs;
    for (bool prefix : {false, true}) {
      EngineOptions o = Options();
      o.kv.page_size = 8;
      o.kv.prefix_caching = prefix;
      Engine engine(w, o);
      Request first = Greedy(Prompt(13, salt), 24, false);
      ASSERT_TRUE(engine.Add(first).ok());
      const auto turn1 = engine.RunToCompletion();
      std::vector<int32_t> p = first.prompt_ids;
      p.insert(p.end(), turn1[0].generated_ids.begin(), turn1[0].generated_ids.end());
      p.insert(p.end(), {5, 6});
      Request second = Greedy(p, 12, false);
      second.logprobs = 4;
      ASSERT_TRUE(engine.Add(second).ok());
      const auto turn2 = engine.RunToCompletion();
      std::vector<float> lp;
      for (const auto& t : turn2[1].logprobs) {
        lp.push_back(t.logprob);
        lp.insert(lp.end(), t.top_logprobs.begin(), t.top_logprobs.end());
      }
      logprobs.push_back(lp);
      if (prefix) {
        EXPECT_EQ(engine.prompt_tokens_cached(), 8) << "salt " << salt;  // the 13-token prompt's one page
      }
    }
    EXPECT_EQ(logprobs[0], logprobs[1]) << "salt " << salt;
  }
}

TEST_P(EngineCache, ChunkedPrefillOnAPrefixHitEqualsUnchunked) {
  const ModelWeights& w = TinyModel(DType::kBF16);
  std::vector<int32_t> prompt = Prompt(70, 14);
  std::vector<int32_t> longer = prompt;
  for (int32_t t : Prompt(30, 15)) longer.push_back(t);
  EngineOptions whole = Options(), chunked = Options();
  whole.kv.page_size = chunked.kv.page_size = 8;
  chunked.kv.prefix_caching = true;
  chunked.prefill_chunk = 5;  // the uncached 36 tokens in chunks of 5, straddling pages
  Engine* engine = nullptr;
  const auto a = TwoWaves(w, whole, {Greedy(prompt, 3, false)}, {Greedy(longer, 12, false)});
  const auto b = TwoWaves(w, chunked, {Greedy(prompt, 3, false)}, {Greedy(longer, 12, false)}, &engine);
  EXPECT_EQ(engine->prompt_tokens_cached(), 64);
  EXPECT_EQ(a[1].generated_ids, b[1].generated_ids);
}

TEST_P(EngineCache, SequencesSharingAPrefixComputeItOnce) {
  // Admitted together: the followers wait for the first one's pages instead of computing them.
  const ModelWeights& w = TinyModel(DType::kBF16);
  std::vector<Request> requests;
  for (int32_t i = 0; i < 4; ++i) {
    std::vector<int32_t> p = Prompt(45, 16);
    p.push_back(100 + i);
    requests.push_back(Greedy(p, 4, false));
  }
  requests.push_back(Greedy(Prompt(20, 17), 4, false));  // unrelated: passes the waiting ones
  EngineOptions off = Options(), on = Options();
  off.kv.page_size = on.kv.page_size = 8;
  on.kv.prefix_caching = true;
  on.prefill_chunk = off.prefill_chunk = 16;
  Engine engine(w, on);
  for (const Request& r : requests) ASSERT_TRUE(engine.Add(r).ok());
  const auto b = engine.RunToCompletion();
  const auto a = RunAll(w, off, requests);
  EXPECT_EQ(engine.prompt_tokens_cached(), 3 * 40);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].generated_ids, b[i].generated_ids) << "request " << i;
}

TEST_P(EngineCache, PreemptionChangesNoTokenBitwise) {
  // A pool too small for every sequence's growth: the newest running ones are preempted, wait,
  // and are computed again from their tokens so far (prompt in prefill form, generated tokens in
  // decode form), greedy and sampled alike, with and without prefix caching.
  const ModelWeights& w = TinyModel(DType::kBF16);
  std::vector<Request> requests;
  for (int32_t i = 0; i < 6; ++i) {
    Request r = Greedy(Prompt(10 + 7 * i, 20 + i), 30, false);
    if (i % 2 == 1) {
      r.sampling.temperature = 0.8f;
      r.sampling.seed = static_cast<uint64_t>(i);
    }
    requests.push_back(r);
  }
  EngineOptions roomy = Options();
  roomy.kv.page_size = 8;
  const auto a = RunAll(w, roomy, requests);
  for (bool prefix : {false, true}) {
    EngineOptions tight = roomy;
    tight.kv.max_tokens = 96;  // 12 pages; the longest request needs 9
    tight.kv.prefix_caching = prefix;
    Engine engine(w, tight);
    for (const Request& r : requests) ASSERT_TRUE(engine.Add(r).ok());
    const auto b = engine.RunToCompletion();
    EXPECT_GT(engine.preemptions(), 0) << "the pool never ran out: the test shows nothing";
    EXPECT_EQ(engine.cache().free_pages(), engine.cache().total_pages());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].generated_ids, b[i].generated_ids) << "request " << i << (prefix ? " with prefix caching" : "");
      EXPECT_EQ(b[i].finish_reason, "length");
    }
  }
}

TEST(Engine, PrefixCachingLeavesPromptLogitRequestsWhole) {
  const ModelWeights& w = TinyModel(DType::kBF16);
  EngineOptions on;
  on.kv.page_size = 8;
  on.kv.prefix_caching = true;
  Engine* engine = nullptr;
  const auto out = TwoWaves(w, on, {Greedy(Prompt(30, 13), 2, false)}, {Greedy(Prompt(30, 13), 2, true)}, &engine);
  EXPECT_EQ(engine->prompt_tokens_cached(), 0);
  EXPECT_EQ(out[1].prompt_logits.size(), 30u);
}

TEST(Engine, SamplingIsSeededAndTopKOneIsGreedy) {
  const ModelWeights& w = TinyModel(DType::kBF16);
  Request r = Greedy(Prompt(5, 9), 16, false);
  r.sampling.temperature = 1.0f;
  r.sampling.seed = 11;
  Request same = r, other = r, top1 = r, greedy = Greedy(Prompt(5, 9), 16, false);
  other.sampling.seed = 12;
  top1.sampling.top_k = 1;
  const auto out = RunAll(w, EngineOptions{}, {r, same, other, top1, greedy});
  EXPECT_EQ(out[0].generated_ids, out[1].generated_ids);
  EXPECT_NE(out[0].generated_ids, out[2].generated_ids);
  EXPECT_EQ(out[3].generated_ids, out[4].generated_ids);
}

TEST(Engine, RejectsBadRequests) {
  Engine engine(TinyModel(DType::kBF16), EngineOptions{});
  EXPECT_FALSE(engine.Add(Greedy({}, 4)).ok());
  auto bad = engine.Add(Greedy({1, 512}, 4));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("512"), std::string::npos) << bad.status();
  EXPECT_FALSE(engine.Add(Greedy({1, -1}, 4)).ok());
  Request hot = Greedy({1, 2}, 4);
  hot.sampling.top_p = 0;
  EXPECT_FALSE(engine.Add(hot).ok());
  EngineOptions small;
  small.kv.max_tokens = 64;
  Engine tight(TinyModel(DType::kBF16), small);
  EXPECT_EQ(tight.Add(Greedy(Prompt(60, 1), 10)).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(Engine, StopsAtEos) {
  const ModelWeights& w = TinyModel(DType::kBF16);
  // Find a greedy continuation, then declare its third token the end of sequence.
  const auto gen = RunAll(w, EngineOptions{}, {Greedy(Prompt(6, 10), 8, false)})[0].generated_ids;
  EngineOptions options;
  options.eos_token_id = gen[2];
  Request r = Greedy(Prompt(6, 10), 8, false);
  r.stop_at_eos = true;
  const auto stopped = RunAll(w, options, {r})[0];
  EXPECT_EQ(stopped.finish_reason, "stop");
  ASSERT_LE(stopped.generated_ids.size(), 3u);
  EXPECT_EQ(stopped.generated_ids.back(), gen[2]);
}

// Prefill/decode disaggregation: a sequence prefilled on one engine, its latents copied as
// bytes into pages of another, continues there exactly as it would have on one engine — tokens,
// and the log-probabilities of its logits, bitwise — and a failed copy falls back to computing
// the sequence again, with the same result.
TEST(Engine, HandedOffSequencesContinueBitwiseOnAnotherEngine) {
  for (DType dtype : {DType::kBF16, DType::kF8E4M3}) {
    for (bool copy_ok : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "cache " << DTypeName(dtype) << (copy_ok ? ", copied" : ", copy failed"));
      const ModelWeights& w = TinyModel(DType::kBF16);
      EngineOptions o;
      o.kv.dtype = dtype;
      o.kv.page_size = 16;
      o.kv.prefix_caching = true;
      std::vector<Request> requests;
      for (int64_t len : {5, 16, 37}) {
        Request r = Greedy(Prompt(len, static_cast<int32_t>(len)), 6, false);
        r.logprobs = 3;
        requests.push_back(r);
      }
      requests[1].sampling.temperature = 0.8f;
      requests[1].sampling.seed = 3;
      const std::vector<Result> whole = RunAll(w, o, requests);

      Engine prefill(w, o), decode(w, o);
      for (Request r : requests) {
        r.hand_off = true;
        ASSERT_TRUE(prefill.Add(r).ok());
      }
      while (prefill.Step()) {
      }
      std::vector<TokenOut> tokens;
      std::vector<FinishOut> finished;
      prefill.TakeEvents(tokens, finished);
      ASSERT_EQ(tokens.size(), requests.size());
      ASSERT_EQ(finished.size(), requests.size());
      for (size_t i = 0; i < requests.size(); ++i) {
        const int64_t index = finished[i].index;
        EXPECT_EQ(finished[i].reason, "handoff");
        EXPECT_EQ(tokens[index].token, whole[index].generated_ids[0]);
        EXPECT_EQ(tokens[index].logprob, whole[index].logprobs[0].logprob);
        const Engine::HeldPages* held = prefill.held(index);
        ASSERT_NE(held, nullptr);
        EXPECT_EQ(held->tokens, static_cast<int64_t>(requests[index].prompt_ids.size()));
        Request next = requests[index];
        next.generated_ids = {tokens[index].token};
        const int64_t pending = decode.pending();
        auto imported = decode.Import(next, held->tokens);
        ASSERT_TRUE(imported.ok()) << imported.status();
        EXPECT_EQ(decode.pending(), pending);  // not before its latents are here
        const auto from = prefill.cache().Ranges(held->pages, held->tokens);
        const auto to = decode.cache().Ranges(*decode.import_pages(*imported), held->tokens);
        ASSERT_EQ(from.size(), to.size());
        size_t bytes = 0;
        for (size_t k = 0; k < from.size(); ++k) {
          ASSERT_EQ(from[k].bytes, to[k].bytes);
          if (copy_ok) std::memcpy(decode.cache().pool() + to[k].offset, prefill.cache().pool() + from[k].offset, from[k].bytes);
          bytes += from[k].bytes;
        }
        EXPECT_EQ(static_cast<int64_t>(bytes), held->tokens * w.config.num_hidden_layers * KvRowBytes(w.config, dtype));
        decode.Imported(*imported, copy_ok);
        prefill.ReleaseHeld(index);
      }
      EXPECT_EQ(prefill.cache().free_pages(), prefill.cache().total_pages());
      const std::vector<Result> continued = decode.RunToCompletion();
      EXPECT_EQ(decode.cache().free_pages(), decode.cache().total_pages());
      for (size_t i = 0; i < requests.size(); ++i) {
        EXPECT_EQ(continued[i].generated_ids, whole[finished[i].index].generated_ids);
        const auto& expect = whole[finished[i].index].logprobs;
        ASSERT_EQ(continued[i].logprobs.size() + 1, expect.size());
        for (size_t t = 0; t < continued[i].logprobs.size(); ++t) {
          EXPECT_EQ(continued[i].logprobs[t].logprob, expect[t + 1].logprob);
          EXPECT_EQ(continued[i].logprobs[t].top_logprobs, expect[t + 1].top_logprobs);
        }
      }
    }
  }
}

TEST(Engine, ImportRefusesPositionsItCannotTake) {
  Engine engine(TinyModel(DType::kBF16), EngineOptions{});
  Request r = Greedy(Prompt(8, 1), 4, false);
  r.generated_ids = {3};
  EXPECT_EQ(engine.Import(r, 9).status().code(), absl::StatusCode::kInvalidArgument);  // the last is computed here
  EXPECT_EQ(engine.Import(r, 0).status().code(), absl::StatusCode::kInvalidArgument);
  auto ok = engine.Import(r, 8);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(engine.Cancel(*ok));  // its pages come back
  EXPECT_EQ(engine.cache().free_pages(), engine.cache().total_pages());
  // Fewer positions than all but the last: the rest are computed here, into pages of their own.
  EngineOptions small_pages;
  small_pages.kv.page_size = 4;
  Engine short_import(TinyModel(DType::kBF16), small_pages);
  auto part = short_import.Import(r, 4);
  ASSERT_TRUE(part.ok()) << part.status();
  EXPECT_GE(static_cast<int64_t>(short_import.import_pages(*part)->size()) * 4, 9);
  short_import.Imported(*part, true);
  const auto done = short_import.RunToCompletion();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].finish_reason, "length");
  EXPECT_EQ(short_import.cache().free_pages(), short_import.cache().total_pages());
}

}  // namespace
}  // namespace daedalus
