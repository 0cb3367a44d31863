// The paged latent cache's row formats: what FP8 keeps of a latent, and that its size is the
// one the planner counts.
#include "worker/kv_cache.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "core/host_memory.h"
#include "core/kv_row.h"
#include "gtest/gtest.h"
#include "planner/model_shape.h"
#include "worker/presets.h"

namespace daedalus {
namespace {

ModelConfig Preset(const std::string& name) {
  auto c = PresetConfig(name);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

KvCacheOptions Options(DType dtype, int64_t page_size = 4, int64_t max_tokens = 64) {
  KvCacheOptions o;
  o.dtype = dtype;
  o.page_size = page_size;
  o.max_tokens = max_tokens;
  return o;
}

// Latent rows whose 128-value blocks differ in magnitude by orders (so a scale shared across
// blocks would lose the small ones), with exact zeros and one all-zero block.
std::vector<float> Latents(const ModelConfig& c, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(n * c.kv_cache_dim());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < c.kv_cache_dim(); ++i) {
      const int64_t block = i < c.kv_lora_rank ? i / kKvFp8Block : -1;
      const float magnitude = block < 0 ? 1.0f : std::pow(10.0f, static_cast<float>((block + t) % 4) - 2);
      v[t * c.kv_cache_dim() + i] = i % 17 == 5 ? 0.0f : normal(rng) * magnitude;
    }
  if (c.kv_lora_rank > kKvFp8Block)
    for (int64_t i = kKvFp8Block; i < 2 * kKvFp8Block; ++i) v[i] = 0.0f;  // token 0, block 1
  return v;
}

TEST(KvCache, Fp8RowKeepsEachValueWithinE4m3RoundingOfItsBlockScale) {
  for (const char* preset : {"tiny", "small"}) {  // kv_lora_rank 64 (one partial block) and 256
    const ModelConfig c = Preset(preset);
    PagedKvCache cache(c, Options(DType::kF8E4M3));
    PagedKvCache::PageTable pages;
    const int64_t n = 11, dim = c.kv_cache_dim(), rkv = c.kv_lora_rank;
    ASSERT_TRUE(cache.Reserve(pages, n).ok());
    const std::vector<float> in = Latents(c, n, 3);
    for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer)
      for (int64_t t = 0; t < n; ++t) cache.Write(pages, layer, t, &in[t * dim]);
    for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
      std::vector<float> out(n * dim);
      cache.Read(pages, layer, 0, n, out.data());
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t b = 0; b * kKvFp8Block < rkv; ++b) {
          float amax = 0;
          for (int64_t i = b * kKvFp8Block; i < std::min(rkv, (b + 1) * kKvFp8Block); ++i)
            amax = std::max(amax, std::fabs(in[t * dim + i]));
          for (int64_t i = b * kKvFp8Block; i < std::min(rkv, (b + 1) * kKvFp8Block); ++i) {
            const float x = in[t * dim + i], y = out[t * dim + i];
            // e4m3 keeps 3 mantissa bits (half-ulp 2^-4 relative) down to 2^-6 of the block's
            // 448, then steps of 2^-9 · scale (half: 2^-10 · amax / 448).
            const double bound = std::fabs(x) * (0x1p-4 + 1e-6) + amax / 448.0 * 0x1p-10 + 1e-30;
            ASSERT_LE(std::fabs(static_cast<double>(x) - y), bound) << preset << " token " << t << " element " << i;
            if (x == 0.0f) {
              ASSERT_EQ(y, 0.0f);
            }
          }
        }
        for (int64_t i = rkv; i < dim; ++i)  // k_pe: bf16
          ASSERT_EQ(out[t * dim + i], Bf16ToF32(F32ToBf16(in[t * dim + i]))) << preset << " k_pe element " << i;
      }
      // Reading a window from the middle of a page gives the same rows.
      std::vector<float> window(3 * dim);
      cache.Read(pages, layer, 5, 3, window.data());
      for (int64_t i = 0; i < 3 * dim; ++i) ASSERT_EQ(window[i], out[5 * dim + i]);
    }
  }
}

TEST(KvCache, Fp8RowIsCoarserThanBf16ByE4m3sRounding) {
  // The FP8 row is not a disguised bf16 one: its error is e4m3's, larger than bf16's.
  const ModelConfig c = Preset("small");
  PagedKvCache fp8(c, Options(DType::kF8E4M3)), bf16(c, Options(DType::kBF16));
  PagedKvCache::PageTable a, b;
  ASSERT_TRUE(fp8.Reserve(a, 1).ok());
  ASSERT_TRUE(bf16.Reserve(b, 1).ok());
  const std::vector<float> in = Latents(c, 1, 9);
  fp8.Write(a, 0, 0, in.data());
  bf16.Write(b, 0, 0, in.data());
  std::vector<float> x(c.kv_cache_dim()), y(c.kv_cache_dim());
  fp8.Read(a, 0, 0, 1, x.data());
  bf16.Read(b, 0, 0, 1, y.data());
  double e8 = 0, e16 = 0, norm = 0;
  for (int64_t i = 0; i < c.kv_lora_rank; ++i) {
    e8 += (x[i] - in[i]) * (x[i] - in[i]);
    e16 += (y[i] - in[i]) * (y[i] - in[i]);
    norm += in[i] * in[i];
  }
  EXPECT_GT(e8, 4 * e16);
  EXPECT_LT(std::sqrt(e8 / norm), 0.04);  // e4m3's mean rounding error is about 2^-5 relative
}

TEST(KvCache, RowBytesAreThePlannersAndFlashMlasFigures) {
  auto v3 = ModelConfig::Load(std::string(DAEDALUS_SOURCE_DIR) + "/cluster-configs/models/deepseek-v3/config.json");
  ASSERT_TRUE(v3.ok()) << v3.status();
  EXPECT_EQ(KvRowBytes(*v3, DType::kF8E4M3), 656);  // 512 + 4 × 4 + 64 × 2
  EXPECT_EQ(KvBytesPerToken(*v3, DType::kF8E4M3), 40016);
  EXPECT_EQ(KvBytesPerToken(*v3, DType::kBF16), 70272);
  for (const ModelConfig& c : {*v3, Preset("tiny"), Preset("small"), Preset("bench")}) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
      KvCacheOptions o = Options(dtype, 64, 1 << 12);
      o.host_pool = false;
      const PagedKvCache cache(c, o);
      // A full page's bytes per token, less the page table's 4 bytes per page.
      EXPECT_DOUBLE_EQ(cache.BytesPerToken() - 4.0 / 64, static_cast<double>(KvBytesPerToken(c, dtype)))
          << DTypeName(dtype) << " kv_lora_rank " << c.kv_lora_rank;
    }
  }
}

// Warm only loads: over ranges that cross pages and reach the pool's last byte (which a
// sanitizer build would catch it reading past), every row reads back as before.
TEST(KvCache, WarmReadsOnlyTheRowsAskedAndChangesNothing) {
  const ModelConfig c = Preset("tiny");
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    PagedKvCache cache(c, Options(dtype, 4, 16));
    PagedKvCache::PageTable pages;
    ASSERT_TRUE(cache.Reserve(pages, 16).ok());  // every page of the pool
    const std::vector<float> latents = Latents(c, 16, 3);
    for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer)
      for (int64_t pos = 0; pos < 16; ++pos) cache.Write(pages, layer, pos, &latents[pos * c.kv_cache_dim()]);
    std::vector<float> before(16 * c.kv_cache_dim()), after(before.size());
    for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
      cache.Read(pages, layer, 16, before.data());
      for (const auto& [begin, n] : std::vector<std::pair<int64_t, int64_t>>{{0, 16}, {3, 6}, {15, 1}, {4, 4}})
        cache.Warm(pages, layer, begin, n);
      cache.Read(pages, layer, 16, after.data());
      EXPECT_EQ(before, after) << DTypeName(dtype) << " layer " << layer;
    }
  }
}

// Prefix caching against a model of the pool: random prompts over a 3-token alphabet (so
// prefixes are shared often) start and finish in random order in a pool too small to keep
// everything. Each position's latent encodes the whole prefix up to it, so a page served to the
// wrong prefix, or overwritten while a sequence still uses it, shows up as a wrong value.
class PrefixPool {
 public:
  explicit PrefixPool(uint64_t (*hash)(uint64_t, const int32_t*, int64_t)) : config_(Preset("tiny")) {
    KvCacheOptions o = Options(DType::kF32, 4, 64);
    o.prefix_caching = true;
    o.page_hash = hash;
    o.log_names = true;
    hash_ = hash;
    cache_ = std::make_unique<PagedKvCache>(config_, o);
  }

  void Run(uint32_t seed, int ops) {
    std::mt19937 rng(seed);
    for (int op = 0; op < ops; ++op) {
      if (live_.empty() || (rng() % 3 != 0 && live_.size() < 6)) Start(rng);
      else Finish(rng() % live_.size());
      CheckConservation();
    }
    while (!live_.empty()) Finish(0);
    EXPECT_EQ(cache_->free_pages(), cache_->total_pages());
    EXPECT_GT(hits_, 0) << "no prefix was ever served from the cache";
  }

  int64_t hits_ = 0, starts_ = 0;

 private:
  struct Seq {
    std::vector<int32_t> tokens;
    PagedKvCache::PageTable pages;
    PagedKvCache::PrefixChain chain;
  };
  // Exact in float: a polynomial code of tokens[0, pos] below 2^20, plus the element index.
  static float Code(const std::vector<int32_t>& tokens, int64_t pos, int64_t element) {
    uint32_t h = 7;
    for (int64_t i = 0; i <= pos; ++i) h = (h * 31 + static_cast<uint32_t>(tokens[i]) + 1) % (1u << 20);
    return static_cast<float>(h) + static_cast<float>(element) * 0x1p21f;
  }
  void CheckContent(const Seq& s, int64_t n, const char* when) {
    const int64_t dim = config_.kv_cache_dim();
    std::vector<float> row(dim);
    for (int64_t pos = 0; pos < n; ++pos) {
      cache_->Read(s.pages, 0, pos, 1, row.data());
      for (int64_t e = 0; e < dim; e += 17) ASSERT_EQ(row[e], Code(s.tokens, pos, e)) << when << ": position " << pos;
    }
  }
  void Start(std::mt19937& rng) {
    Seq s;
    const int64_t len = 1 + rng() % 14;
    for (int64_t i = 0; i < len; ++i) s.tokens.push_back(static_cast<int32_t>(rng() % 3));
    const int64_t hit = cache_->MatchPrefix(s.tokens, len - 1, s.pages, s.chain);
    ASSERT_EQ(hit % 4, 0);
    // A coordinator holding the reported names would have predicted at least this hit.
    uint64_t name = kRootPageHash;
    for (int64_t p = 0; p < hit / 4; ++p) {
      name = hash_(name, s.tokens.data() + 4 * p, 4);
      ASSERT_TRUE(reported_.contains(name)) << "page " << p << " of a hit was never reported";
    }
    ASSERT_LE(hit, len - 1);
    CheckContent(s, hit, "served prefix");
    if (!cache_->Reserve(s.pages, len).ok()) {
      cache_->Release(s.pages);
      return;
    }
    ++starts_;
    hits_ += hit;
    const int64_t dim = config_.kv_cache_dim();
    std::vector<float> row(dim);
    for (int64_t pos = hit; pos < len; ++pos) {
      for (int64_t e = 0; e < dim; ++e) row[e] = Code(s.tokens, pos, e);
      cache_->Write(s.pages, 0, pos, row.data());
    }
    cache_->Publish(s.pages, s.tokens, len, s.chain);
    live_.push_back(std::move(s));
  }
  void Finish(size_t i) {
    CheckContent(live_[i], static_cast<int64_t>(live_[i].tokens.size()), "a running sequence's pages at its end");
    cache_->Release(live_[i].pages);
    live_.erase(live_.begin() + static_cast<std::ptrdiff_t>(i));
  }
  // Every page is referenced by a running sequence, or reclaimable (free or cached), never both.
  void CheckConservation() {
    // The reported names, applied in order, are the cache's named pages.
    std::vector<uint64_t> removed, added;
    cache_->TakeNameChanges(removed, added);
    for (uint64_t n : removed) ASSERT_EQ(reported_.erase(n), 1u) << "a name dropped that was never reported";
    for (uint64_t n : added) reported_.insert(n);
    ASSERT_EQ(static_cast<int64_t>(reported_.size()), cache_->cached_pages());
    std::set<int32_t> used;
    for (const Seq& s : live_) used.insert(s.pages.begin(), s.pages.end());
    ASSERT_EQ(static_cast<int64_t>(used.size()) + cache_->free_pages(), cache_->total_pages());
  }

  ModelConfig config_;
  std::unique_ptr<PagedKvCache> cache_;
  std::vector<Seq> live_;
  uint64_t (*hash_)(uint64_t, const int32_t*, int64_t);
  std::set<uint64_t> reported_;  // the names a coordinator would hold
};

TEST(KvCache, PrefixCachingServesOnlyExactPrefixesAndNeverEvictsPagesInUse) {
  PrefixPool pool(PageHash);
  pool.Run(1, 3000);
  EXPECT_GT(pool.starts_, 500);
}

uint64_t CollidingHash(uint64_t, const int32_t*, int64_t) { return 42; }

TEST(KvCache, PrefixCachingStaysExactWhenEveryPageNameCollides) {
  PrefixPool pool(CollidingHash);  // lookups find some page; the token and parent checks decide
  pool.Run(2, 3000);
}

TEST(KvCache, PagesAfterADuplicatePrefixAreStillCached) {
  // Two sequences with the same first page computed at once: the second's copy of it stays
  // unnamed, but its own second page is cached as the successor of the first's copy.
  const ModelConfig c = Preset("tiny");
  KvCacheOptions o = Options(DType::kBF16, 4, 64);
  o.prefix_caching = true;
  PagedKvCache cache(c, o);
  const std::vector<int32_t> a = {1, 2, 3, 4, 5, 5, 5, 5}, b = {1, 2, 3, 4, 6, 6, 6, 6};
  PagedKvCache::PageTable pa, pb, pc;
  PagedKvCache::PrefixChain ca, cb, cc;
  ASSERT_TRUE(cache.Reserve(pa, 8).ok());
  ASSERT_TRUE(cache.Reserve(pb, 8).ok());
  cache.Publish(pa, a, 8, ca);
  cache.Publish(pb, b, 8, cb);
  EXPECT_EQ(cache.cached_pages(), 3);
  cache.Release(pa);
  cache.Release(pb);
  std::vector<int32_t> again = b;
  again.push_back(9);
  EXPECT_EQ(cache.MatchPrefix(again, 8, pc, cc), 8);
  cache.Release(pc);
  EXPECT_EQ(cache.free_pages(), cache.total_pages());
}

TEST(KvCache, PrefixCachingOffMatchesNothing) {
  const ModelConfig c = Preset("tiny");
  PagedKvCache cache(c, Options(DType::kBF16, 4, 64));
  PagedKvCache::PageTable a, b;
  PagedKvCache::PrefixChain ca, cb;
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  ASSERT_TRUE(cache.Reserve(a, 9).ok());
  cache.Publish(a, tokens, 9, ca);
  cache.Release(a);
  EXPECT_EQ(cache.MatchPrefix(tokens, 8, b, cb), 0);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(cache.cached_pages(), 0);
}

// The pool is committed when the cache is built: every page of it is resident before any row is
// written (a fresh mapping of 16 MB has none until something writes it).
TEST(KvCache, PoolIsResidentBeforeAnyWrite) {
  const ModelConfig c = Preset("bench");
  KvCacheOptions o = Options(DType::kBF16, 64, 0);
  o.max_tokens = (16 << 20) / (KvRowBytes(c, o.dtype) * c.num_hidden_layers);
  PagedKvCache cache(c, o);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(cache.pool()), end = begin + PagedKvCache::PoolBytes(c, o);
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;  // whole pages inside
  ASSERT_GT(last, first + 1024 * page);
  std::vector<unsigned char> resident((last - first) / page);
  ASSERT_EQ(mincore(reinterpret_cast<void*>(first), last - first, resident.data()), 0);
  int64_t missing = 0;
  for (unsigned char r : resident) missing += (r & 1) == 0;
  EXPECT_EQ(missing, 0) << "of " << resident.size() << " pages";
}

// A pool larger than the memory available is refused with the sizes and the flags to change;
// one that fits, a GPU's (no host pool) and a caller's pool are not checked against it.
TEST(KvCache, CheckFitsRefusesAPoolLargerThanTheMemoryAvailable) {
  const int64_t available = AvailableHostBytes();
  ASSERT_GT(available, 0) << "/proc/meminfo's MemAvailable";
  const ModelConfig c = Preset("tiny");
  KvCacheOptions o = Options(DType::kBF16, 64, 1 << 16);
  EXPECT_TRUE(PagedKvCache::CheckFits(c, o).ok());
  o.max_tokens = available / (KvRowBytes(c, o.dtype) * c.num_hidden_layers) + (int64_t{1} << 20);
  const absl::Status too_big = PagedKvCache::CheckFits(c, o);
  EXPECT_EQ(too_big.code(), absl::StatusCode::kResourceExhausted) << too_big;
  for (const char* part : {"KV cache pool needs", "MiB of memory is available", "--kv-cache-tokens", "--kv-cache-mib"})
    EXPECT_NE(too_big.message().find(part), std::string::npos) << part << " in " << too_big.message();
  // A pool of 60% of what is available fits one process, not each of two sharing the node.
  o.max_tokens = available * 6 / 10 / (KvRowBytes(c, o.dtype) * c.num_hidden_layers);
  EXPECT_TRUE(PagedKvCache::CheckFits(c, o, 1).ok());
  const absl::Status shared = PagedKvCache::CheckFits(c, o, 2);
  EXPECT_EQ(shared.code(), absl::StatusCode::kResourceExhausted) << shared;
  EXPECT_NE(shared.message().find("shared by the 2 processes started on this node"), std::string::npos) << shared;
  o.host_pool = false;
  EXPECT_TRUE(PagedKvCache::CheckFits(c, o).ok());
  o.host_pool = true;
  uint8_t caller_pool[1];
  o.pool = caller_pool;
  EXPECT_TRUE(PagedKvCache::CheckFits(c, o).ok());
}

}  // namespace
}  // namespace daedalus
