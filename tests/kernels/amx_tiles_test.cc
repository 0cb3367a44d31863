// The amx tier's tile kernels (kernels/cpu/amx_tiles.inc) on any machine: the same code built
// over a tile emulator that follows the instructions' definitions (Intel SDM: LDTILECFG,
// TILEZERO, TILELOADD, TILESTORED, TDPBF16PS's pseudocode, TILERELEASE, including the tile
// shapes TDPBF16PS refuses), run through the GEMM driver with the rest of the amx table. This
// checks the kernels' layout, blocking, tails and chunking bit for bit; the hardware's own
// rounding inside an instruction may differ from the pseudocode's in the last bits, so on AMX
// machines linear_test's amx tier checks the real tiles against a bound.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cpu/tier.h"
#include "kernels/linear.h"
#include "kernels/panel_layout.h"

namespace daedalus::cpu {
namespace emulated {

// One thread's tile state, as the hardware keeps it per thread.
struct Tile {
  int rows = 0, colsb = 0;
  uint8_t data[16][64] = {};
};
thread_local Tile tiles[8];
thread_local bool configured = false;

// The tile unit treats denormal inputs as zero and flushes denormal results (DAZ, FTZ).
float Flush(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; }

float Bf16At(const Tile& t, int row, int i) {
  uint16_t v;
  std::memcpy(&v, &t.data[row][2 * i], 2);
  return Flush(Bf16ToF32(v));
}

void Config(const void* cfg) {
  const auto* b = static_cast<const uint8_t*>(cfg);
  ASSERT_EQ(b[0], 1) << "palette";
  for (int t = 0; t < 16; ++t) {
    uint16_t colsb;
    std::memcpy(&colsb, b + 16 + 2 * t, 2);
    const int rows = b[48 + t];
    if (t >= 8) {
      ASSERT_TRUE(colsb == 0 && rows == 0) << "palette 1 has 8 tiles; tile " << t << " configured";
      continue;
    }
    ASSERT_TRUE(rows <= 16 && colsb <= 64 && colsb % 4 == 0) << "tile " << t << ": " << rows << " x " << colsb;
    tiles[t] = Tile{};
    tiles[t].rows = rows;
    tiles[t].colsb = colsb;
  }
  configured = true;
}

Tile& Use(int t) {
  EXPECT_TRUE(configured) << "tile instruction before LDTILECFG";
  return tiles[t];
}

void Zero(int t) { std::memset(Use(t).data, 0, sizeof(Tile::data)); }

void Load(int t, const void* p, int64_t stride) {
  Tile& tile = Use(t);
  std::memset(tile.data, 0, sizeof(Tile::data));
  for (int r = 0; r < tile.rows; ++r) std::memcpy(tile.data[r], static_cast<const uint8_t*>(p) + r * stride, tile.colsb);
}

void Store(int t, void* p, int64_t stride) {
  const Tile& tile = Use(t);
  for (int r = 0; r < tile.rows; ++r) std::memcpy(static_cast<uint8_t*>(p) + r * stride, tile.data[r], tile.colsb);
}

// TDPBF16PS dst, src1, src2, as the SDM's pseudocode computes it: per output, the even and
// the odd products of the pairs summed apart from zero by float FMAs, then the two sums added,
// then that added to dst; round to nearest even, DAZ and FTZ.
void Dp(int dst, int src1, int src2) {
  Tile &c = Use(dst), &a = Use(src1), &b = Use(src2);
  ASSERT_TRUE(dst != src1 && dst != src2 && src1 != src2) << "#UD: tiles not distinct";
  ASSERT_EQ(c.colsb, b.colsb) << "#UD: dst and src2 widths";
  ASSERT_EQ(c.rows, a.rows) << "#UD: dst and src1 rows";
  ASSERT_EQ(a.colsb / 4, b.rows) << "#UD: src1 width against src2 rows";
  for (int m = 0; m < c.rows; ++m) {
    float even[16] = {}, odd[16] = {}, row[16];
    for (int k = 0; k < a.colsb / 4; ++k)
      for (int n = 0; n < c.colsb / 4; ++n) {
        even[n] = Flush(std::fma(Bf16At(a, m, 2 * k), Bf16At(b, k, 2 * n), even[n]));
        odd[n] = Flush(std::fma(Bf16At(a, m, 2 * k + 1), Bf16At(b, k, 2 * n + 1), odd[n]));
      }
    std::memcpy(row, c.data[m], sizeof(row));
    for (int n = 0; n < c.colsb / 4; ++n) row[n] = Flush(row[n] + Flush(even[n] + odd[n]));
    std::memset(c.data[m], 0, sizeof(c.data[m]));
    std::memcpy(c.data[m], row, c.colsb);
  }
}

#define DAEDALUS_TILE_CONFIG(cfg) Config(cfg)
#define DAEDALUS_TILE_ZERO(t) Zero(t)
#define DAEDALUS_TILE_LOAD(t, p, stride) Load(t, p, stride)
#define DAEDALUS_TILE_STORE(t, p, stride) Store(t, p, stride)
#define DAEDALUS_TILE_DP(c, a, b) Dp(c, a, b)
#define DAEDALUS_TILE_PREFETCH(p) (void)(p)
#define DAEDALUS_TILE_RELEASE() (void)(configured = false)
#include "kernels/cpu/amx_tiles.inc"

}  // namespace emulated
namespace {

class AmxTiles : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = MissingCpuFeatures(CpuIsa::kAvx512Bf16);
    if (!missing.empty()) GTEST_SKIP() << "the amx table's other kernels need avx512bf16: this CPU lacks " << missing;
    table_ = AmxKernels();
    table_.tile_panel_bf16 = emulated::TilePanelBf16;
    table_.tile_panel_fp8_decoded = emulated::TilePanelFp8Decoded;
    table_.bf16_probe = emulated::TileProbe;
  }
  TierKernels table_{};
};

struct Product {
  std::vector<float> x, y;
  std::vector<bf16> panels;
  WeightView w;
};

Product Make(int64_t m, int64_t n, int64_t k, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  Product p;
  p.x.resize(m * k);
  for (float& v : p.x) v = dist(rng);
  std::vector<float> wf(n * k);
  for (float& v : wf) v = dist(rng);
  std::vector<bf16> wb(wf.size());
  F32ToBf16(wf.data(), wb.data(), wf.size());
  p.panels.resize(PackedElements(n, k));
  PackBf16(WeightView{DType::kBF16, n, k, wb.data()}, p.panels.data());
  p.w = WeightView{DType::kBF16, n, k, nullptr, p.panels.data()};
  p.y.assign(m * n, NAN);
  return p;
}

// One TDPBF16PS's share of an output, as the SDM computes it (see Dp): x · w over the 32
// inputs from k0, even and odd products summed apart by FMAs, then added.
template <typename X, typename W>
float TileStep(const X& x, const W& w, int64_t k0) {
  float even = 0, odd = 0;
  for (int64_t k = k0; k < k0 + 32; k += 2) {
    even = std::fma(x(k), w(k), even);
    odd = std::fma(x(k + 1), w(k + 1), odd);
  }
  return even + odd;
}

// What the tile kernels compute, written independently of them: per output, the steps of 32
// inputs in order, each added to the running sum, from 0.
float TileChain(const Product& p, int64_t i, int64_t n) {
  const int64_t K = p.w.cols;
  auto x = [&](int64_t k) { return Bf16ToF32(F32ToBf16(p.x[i * K + k])); };
  auto w = [&](int64_t k) { return p.w.at(n, k); };
  float acc = 0;
  for (int64_t k0 = 0; k0 < K; k0 += 32) acc += TileStep(x, w, k0);
  return acc;
}

// Token counts around the tile blocks (16 rows per tile, 32 per call), panels with 1-32 valid
// rows, inputs of one step, several steps, and more than one 1024-input pass.
TEST_F(AmxTiles, ProductsAreOneTdpbf16psPerStepInOrder) {
  ScopedKernelsForTest scoped(&table_);
  struct Shape {
    int64_t m, n, k;
  };
  for (Shape s : {Shape{1, 32, 32}, Shape{1, 7, 64}, Shape{5, 40, 96}, Shape{16, 33, 64}, Shape{17, 64, 128},
                  Shape{32, 1, 32}, Shape{33, 70, 256}, Shape{64, 48, 64}, Shape{70, 9, 160}, Shape{3, 20, 2048},
                  Shape{40, 33, 1056}}) {
    Product p = Make(s.m, s.n, s.k, static_cast<unsigned>(s.m * 131 + s.n * 7 + s.k));
    Linear(p.x.data(), s.m, p.w, p.y.data());
    for (int64_t i = 0; i < s.m; ++i)
      for (int64_t n = 0; n < s.n; ++n)
        ASSERT_EQ(p.y[i * s.n + n], TileChain(p, i, n)) << "m=" << s.m << " n=" << s.n << " k=" << s.k << " at " << i
                                                          << ", " << n;
  }
}

// FP8 weights: decoded to bf16 per chunk, then per 128-input scale block its steps summed from
// zero, scaled into the output by one float multiply-add, block after block.
TEST_F(AmxTiles, Fp8ProductsScaleEachBlocksChain) {
  ScopedKernelsForTest scoped(&table_);
  struct Shape {
    int64_t m, n, k;
  };
  for (Shape s : {Shape{1, 40, 128}, Shape{17, 33, 96}, Shape{40, 150, 384}, Shape{3, 64, 1152}, Shape{33, 20, 2080}}) {
    std::mt19937 rng(static_cast<unsigned>(s.m * 7 + s.n * 131 + s.k));
    std::uniform_real_distribution<float> dist(-1, 1), scale_dist(0.25f, 2.0f);
    std::uniform_int_distribution<int> code_dist(0, 253);  // every finite e4m3 code (not 0x7f, 0xff)
    std::vector<float> x(s.m * s.k), y(s.m * s.n, NAN);
    for (float& v : x) v = dist(rng);
    std::vector<uint8_t> codes(s.n * s.k);
    for (uint8_t& c : codes) {
      const int v = code_dist(rng);
      c = static_cast<uint8_t>(v < 127 ? v : v + 1);
    }
    const int64_t scale_cols = Fp8ScaleBlocks(s.k);
    std::vector<float> scales(Fp8ScaleBlocks(s.n) * scale_cols);
    for (float& v : scales) v = scale_dist(rng);
    std::vector<uint8_t> panels(PackedElements(s.n, s.k));
    PackFp8(WeightView{DType::kF8E4M3, s.n, s.k, codes.data(), nullptr, scales.data()}, panels.data());
    const WeightView w{DType::kF8E4M3, s.n, s.k, nullptr, panels.data(), scales.data()};
    Linear(x.data(), s.m, w, y.data());
    for (int64_t i = 0; i < s.m; ++i)
      for (int64_t n = 0; n < s.n; ++n) {
        float want = 0;
        auto xk = [&](int64_t k) { return Bf16ToF32(F32ToBf16(x[i * s.k + k])); };
        auto wk = [&](int64_t k) { return Fp8E4M3ToF32(codes[n * s.k + k]); };
        for (int64_t b = 0; b < scale_cols; ++b) {
          float chain = 0;
          for (int64_t k0 = b * 128; k0 < std::min(s.k, (b + 1) * 128); k0 += 32) chain += TileStep(xk, wk, k0);
          want = std::fma(chain, scales[(n / 128) * scale_cols + b], want);
        }
        ASSERT_EQ(y[i * s.n + n], want) << "m=" << s.m << " n=" << s.n << " k=" << s.k << " at " << i << ", " << n;
      }
  }
}

// A token's outputs do not depend on the batch: rows alone equal the same rows among 70, and
// rows gathered and scattered through row pointers.
TEST_F(AmxTiles, RowsDoNotDependOnTheBatch) {
  ScopedKernelsForTest scoped(&table_);
  Product p = Make(70, 45, 1088, 7);
  Linear(p.x.data(), 70, p.w, p.y.data());
  for (int64_t i : {0, 15, 16, 31, 32, 69}) {
    std::vector<float> alone(45);
    Linear(p.x.data() + i * 1088, 1, p.w, alone.data());
    for (int64_t n = 0; n < 45; ++n) ASSERT_EQ(alone[n], p.y[i * 45 + n]) << "row " << i << " at " << n;
  }
  std::vector<const float*> x_rows;
  std::vector<float> scattered(20 * 45, NAN);
  std::vector<float*> y_rows;
  for (int64_t j = 0; j < 20; ++j) {
    x_rows.push_back(p.x.data() + (69 - 3 * j) * 1088);
    y_rows.push_back(scattered.data() + (19 - j) * 45);
  }
  LinearProblem problem{nullptr, 20, p.w, nullptr, x_rows.data(), y_rows.data()};
  LinearBatch(&problem, 1);
  for (int64_t j = 0; j < 20; ++j)
    for (int64_t n = 0; n < 45; ++n) ASSERT_EQ(scattered[(19 - j) * 45 + n], p.y[(69 - 3 * j) * 45 + n]) << j;
}

// Weights the tiles do not take (inputs not a multiple of 32, FP8) go through the VDPBF16PS
// kernels, in a batch with ones that they take: each matches its own kernel run alone.
TEST_F(AmxTiles, OtherWeightsKeepTheirKernels) {
  Product tiled = Make(20, 40, 64, 1), paired = Make(20, 40, 66, 2);
  std::vector<float> want(20 * 40);
  {
    ScopedKernelsForTest scoped(&Avx512Bf16Kernels());
    Linear(paired.x.data(), 20, paired.w, want.data());
  }
  ScopedKernelsForTest scoped(&table_);
  LinearProblem problems[] = {{tiled.x.data(), 20, tiled.w, tiled.y.data()}, {paired.x.data(), 20, paired.w, paired.y.data()}};
  LinearBatch(problems, 2);
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(paired.y[i], want[i]) << i;
  for (int64_t i = 0; i < 20; ++i)
    for (int64_t n = 0; n < 40; ++n) ASSERT_EQ(tiled.y[i * 40 + n], TileChain(tiled, i, n)) << i << ", " << n;
}

// The packer the real tier uses: rows of 32 inputs rounded to bf16, 16-row tiles, zero rows
// past the tokens, and a short last step padded with zeros.
TEST_F(AmxTiles, PackerWritesTileRows) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-4, 4);
  for (int mr : {1, 16, 17, 32}) {
    const int64_t K = 80, padded = (mr + 15) / 16 * 16, steps = (K + 31) / 32;
    std::vector<std::vector<float>> rows(mr, std::vector<float>(K));
    std::vector<const float*> ptrs;
    for (auto& r : rows) {
      for (float& v : r) v = dist(rng);
      ptrs.push_back(r.data());
    }
    std::vector<uint16_t> out(steps * padded * 32, 0xffff);
    table_.pack_bf16_tiles(ptrs.data(), mr, K, out.data());
    for (int64_t s = 0; s < steps; ++s)
      for (int64_t m = 0; m < padded; ++m)
        for (int64_t j = 0; j < 32; ++j) {
          const int64_t k = s * 32 + j;
          const uint16_t want = m < mr && k < K ? F32ToBf16(rows[m][k]) : 0;
          ASSERT_EQ(out[(s * padded + m) * 32 + j], want) << "mr " << mr << " token " << m << " input " << k;
        }
  }
}

TEST_F(AmxTiles, ProbeCountsItsMultiplyAdds) {
  EXPECT_EQ(emulated::TileProbe(24), 3.0 * 4 * 16 * 16 * 32 * 2);
}

}  // namespace
}  // namespace daedalus::cpu
