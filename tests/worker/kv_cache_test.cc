// The paged latent cache's row formats: what FP8 keeps of a latent, and that its size is the
// one the planner counts.
#include "worker/kv_cache.h"

#include <cmath>
#include <random>
#include <vector>

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

}  // namespace
}  // namespace daedalus
