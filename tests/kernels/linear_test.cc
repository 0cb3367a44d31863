// Linear on every CPU tier against the double-precision triple loop, over shapes that hit every
// tile and tail.
#include "kernels/linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/buffer.h"
#include "gtest/gtest.h"
#include "kernels/cpu/tier.h"
#include "tests/kernels/tiers.h"

namespace daedalus {
namespace {

struct Shape {
  int64_t m, n, k;
};

// What the active tier multiplies: the float activations, or, on the bf16 tiers, the same
// rounded to bf16 (round to nearest even). The reference then sees exactly the kernel's inputs,
// so the bound is float accumulation alone.
std::vector<float> AsTierSees(std::vector<float> x) {
  if (ActiveCpuIsa() >= CpuIsa::kAvx512Bf16)
    for (float& v : x) v = Bf16ToF32(F32ToBf16(v));
  return x;
}

class LinearTier : public testing::EachCpuTier {};

void Check(DType dtype, const Shape& s, bool packed = true) {
  std::mt19937 rng(static_cast<unsigned>(s.m * 1000003 + s.n * 101 + s.k));
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> x(s.m * s.k), wf(s.n * s.k);
  for (auto& v : x) v = dist(rng);
  for (auto& v : wf) v = dist(rng);
  std::vector<bf16> wb(wf.size());
  F32ToBf16(wf.data(), wb.data(), wf.size());
  WeightView w{dtype, s.n, s.k, dtype == DType::kBF16 ? static_cast<const void*>(wb.data()) : wf.data()};
  std::vector<bf16> panels;
  if (dtype == DType::kBF16 && packed) {
    panels.resize(PackedElements(s.n, s.k));
    PackBf16(w, panels.data());
    w.packed = panels.data();
    w.data = nullptr;  // the kernel must read the panels, and at() must find them too
  }
  std::vector<float> got(s.m * s.n, NAN), want(s.m * s.n);
  Linear(x.data(), s.m, w, got.data());
  const bool rounded = dtype == DType::kBF16 && packed;  // only the packed kernels round x
  LinearReference(rounded ? AsTierSees(x).data() : x.data(), s.m, w, want.data());
  // Float accumulation over k terms of magnitude <= 1: error grows like sqrt(k)·eps.
  const float tol = 1e-5f * std::sqrt(static_cast<float>(s.k)) * 4;
  for (int64_t i = 0; i < s.m * s.n; ++i) {
    ASSERT_NEAR(got[i], want[i], tol) << DTypeName(dtype) << " m=" << s.m << " n=" << s.n << " k=" << s.k << " at " << i;
  }
  if (rounded && ActiveCpuIsa() >= CpuIsa::kAvx512Bf16) {
    // Against the unrounded activations: bf16 rounding (2^-9 relative) of k random terms.
    std::vector<float> exact(s.m * s.n);
    LinearReference(x.data(), s.m, w, exact.data());
    const float loose = 4e-3f * std::sqrt(static_cast<float>(s.k)) + tol;
    for (int64_t i = 0; i < s.m * s.n; ++i) ASSERT_NEAR(got[i], exact[i], loose) << "at " << i;
  }
}

// Shapes cover every token count of the kernels (1-12 and more), partial panels (rows not a
// multiple of 32, fewer than 16), odd inputs (a padded pair) and inputs split into several k
// passes (> 1024).
const Shape kShapes[] = {{1, 1, 32},   {1, 7, 64},   {3, 64, 96},  {4, 5, 128},   {5, 67, 256},  {12, 33, 64},
                         {13, 48, 20}, {17, 33, 64}, {100, 20, 32}, {130, 9, 160}, {2, 6, 40},   {3, 3, 7},
                         {1, 40, 2500}, {25, 70, 2049}, {1, 17, 1}, {7, 40, 1025},
                         // amx: one and two tiles of tokens, several calls, two k passes
                         {16, 32, 32}, {20, 40, 64}, {70, 35, 96}, {33, 64, 2048}};

TEST_P(LinearTier, PackedBf16MatchesReference) {
  for (Shape s : kShapes) Check(DType::kBF16, s);
}

TEST_P(LinearTier, UnpackedBf16MatchesReference) {
  for (Shape s : {Shape{1, 7, 64}, Shape{17, 33, 65}}) Check(DType::kBF16, s, /*packed=*/false);
}

TEST_P(LinearTier, F32MatchesReference) {
  for (Shape s : {Shape{1, 1, 32}, Shape{3, 64, 96}, Shape{17, 33, 65}, Shape{100, 20, 7}}) Check(DType::kF32, s);
}

// FP8 codes with 128 × 128 block scales: the packed kernel against the reference reading the
// row-major codes. Shapes span several scale blocks in both directions, partial ones included.
void CheckFp8(const Shape& s) {
  std::mt19937 rng(static_cast<unsigned>(s.m * 7919 + s.n * 31 + s.k));
  std::uniform_real_distribution<float> dist(-1, 1);
  std::uniform_int_distribution<int> code(0, 253);
  std::vector<float> x(s.m * s.k);
  for (auto& v : x) v = dist(rng);
  std::vector<uint8_t> codes(s.n * s.k);
  // Every finite code, subnormals (exponent field 0) and both zeros included; 0x7f is NaN.
  for (auto& c : codes) c = static_cast<uint8_t>((code(rng) % 127) | (code(rng) % 2 ? 0x80 : 0));
  const int64_t sr = (s.n + 127) / 128, sc = (s.k + 127) / 128;
  std::vector<float> scales(sr * sc);
  for (auto& v : scales) v = std::ldexp(1.0f + dist(rng) / 2, -8 - static_cast<int>(code(rng) % 4));
  WeightView w{DType::kF8E4M3, s.n, s.k, codes.data()};
  w.scale_inv = scales.data();
  std::vector<float> want(s.m * s.n), got(s.m * s.n, NAN);
  LinearReference(AsTierSees(x).data(), s.m, w, want.data());
  std::vector<uint8_t> panels(PackedElements(s.n, s.k));
  PackFp8(w, panels.data());
  w.packed = panels.data();
  w.data = nullptr;
  Linear(x.data(), s.m, w, got.data());
  double scale = 0;
  for (float v : scales) scale = std::max<double>(scale, v);
  const double tol = 1e-5 * std::sqrt(static_cast<double>(s.k)) * 4 * 448 * scale;
  for (int64_t i = 0; i < s.m * s.n; ++i) ASSERT_NEAR(got[i], want[i], tol) << "m=" << s.m << " n=" << s.n << " k=" << s.k << " at " << i;
  // at() reads the panels as it read the codes.
  for (int64_t r = 0; r < s.n; r += 7)
    for (int64_t c = 0; c < s.k; c += 13) {
      WeightView rowmajor = w;
      rowmajor.data = codes.data();
      ASSERT_EQ(w.at(r, c), rowmajor.at(r, c));
    }
}

TEST_P(LinearTier, PackedFp8MatchesReference) {
  for (Shape s : {Shape{1, 40, 300}, Shape{5, 129, 256}, Shape{12, 200, 130}, Shape{30, 33, 1100}, Shape{7, 20, 1301},
                  Shape{40, 70, 1152}, Shape{17, 33, 96}})  // the last two on amx's tiles
    CheckFp8(s);
}

TEST_P(LinearTier, RowResultsDoNotDependOnBatch) {
  // A token's output must not change with what else is in the batch (bitwise), for bf16, fp8 and
  // f32 weights, with inputs that amx's tiles take (a multiple of 32) and ones they do not.
  for (const int64_t k : {1500, 1536}) {
    // Three panels (the last partial): a row alone takes one token's FP8 product two whole panels
    // a call, then the third alone, over two input chunks.
    const int64_t n = 80;
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> dist(-1, 1);
    std::vector<float> x(30 * k), wf(n * k);
    for (auto& v : x) v = dist(rng);
    for (auto& v : wf) v = dist(rng);
    std::vector<bf16> wb(wf.size());
    F32ToBf16(wf.data(), wb.data(), wf.size());
    std::vector<uint8_t> codes(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) codes[i] = F32ToFp8E4M3(wf[i] * 100);
    std::vector<float> scales(Fp8ScaleBlocks(n) * Fp8ScaleBlocks(k), 0.01f);
    std::vector<bf16> panels(PackedElements(n, k));
    std::vector<uint8_t> fp8_panels(PackedElements(n, k));
    WeightView bf{DType::kBF16, n, k, wb.data()};
    PackBf16(bf, panels.data());
    bf.packed = panels.data();
    WeightView f8{DType::kF8E4M3, n, k, codes.data(), nullptr, scales.data()};
    PackFp8(f8, fp8_panels.data());
    f8.packed = fp8_panels.data();
    const WeightView f32{DType::kF32, n, k, wf.data()};  // through BLAS
    for (const WeightView& w : {bf, f8, f32}) {
      std::vector<float> all(30 * n), one(n);
      Linear(x.data(), 30, w, all.data());  // blocks of the tier's token count and a remainder
      for (int64_t i = 0; i < 30; ++i) {
        Linear(x.data() + i * k, 1, w, one.data());
        for (int64_t j = 0; j < n; ++j) ASSERT_EQ(one[j], all[i * n + j]) << DTypeName(w.dtype) << " row " << i;
      }
    }
  }
}

TEST_P(LinearTier, BatchedProblemsEqualEachAlone) {
  // Neighbours in a batch that read the same input (gate and up) share its interleaved copy;
  // ones that read another input, or fewer of its rows, or the rows through a gather, must not.
  const int64_t k = 200;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> x(9 * k), x2(9 * k), wf(3 * 40 * k);
  for (auto* v : {&x, &x2, &wf})
    for (float& e : *v) e = dist(rng);
  std::vector<bf16> wb(wf.size());
  F32ToBf16(wf.data(), wb.data(), wf.size());
  std::vector<std::vector<bf16>> panels(3, std::vector<bf16>(PackedElements(40, k)));
  std::vector<WeightView> w;
  for (int i = 0; i < 3; ++i) {
    WeightView v{DType::kBF16, 40, k, wb.data() + i * 40 * k};
    PackBf16(v, panels[i].data());
    v.packed = panels[i].data();
    v.data = nullptr;
    w.push_back(v);
  }
  const float* gathered[9];
  for (int i = 0; i < 9; ++i) gathered[i] = x.data() + (8 - i) * k;  // x's rows, reversed
  std::vector<std::vector<float>> y(6, std::vector<float>(9 * 40, NAN));
  const LinearProblem batch[] = {{x.data(), 9, w[0], y[0].data()},  {x.data(), 9, w[1], y[1].data()},
                                 {x2.data(), 9, w[2], y[2].data()}, {x2.data(), 5, w[0], y[3].data()},
                                 {x2.data(), 5, w[1], y[4].data()}, {x.data(), 9, w[2], y[5].data(), gathered}};
  LinearBatch(batch, 6);
  for (int p = 0; p < 6; ++p) {
    std::vector<float> alone(9 * 40, NAN);
    const LinearProblem one{batch[p].x, batch[p].m, batch[p].w, alone.data(), batch[p].x_rows};
    LinearBatch(&one, 1);
    for (int64_t i = 0; i < batch[p].m * 40; ++i) ASSERT_EQ(y[p][i], alone[i]) << "problem " << p << " at " << i;
  }
}

TEST_P(LinearTier, EmptySumsAreZero) {
  // A product over no inputs, alone and beside another: zeros, not what y held.
  const int64_t n = 40, k = 64;
  std::vector<float> x(3 * k, 1.0f), wf(n * k, 0.5f);
  std::vector<bf16> wb(wf.size()), panels(PackedElements(n, k)), none(PackedElements(n, 1));
  F32ToBf16(wf.data(), wb.data(), wf.size());
  WeightView w{DType::kBF16, n, k, wb.data()};
  PackBf16(w, panels.data());
  w.packed = panels.data();
  WeightView empty{DType::kBF16, n, 0, nullptr};
  empty.packed = none.data();
  std::vector<float> y0(3 * n, NAN), y1(3 * n, NAN);
  const LinearProblem alone{x.data(), 3, empty, y0.data()};
  LinearBatch(&alone, 1);
  for (float v : y0) ASSERT_EQ(v, 0.0f);
  std::fill(y0.begin(), y0.end(), NAN);
  const LinearProblem both[] = {{x.data(), 3, empty, y0.data()}, {x.data(), 3, w, y1.data()}};
  LinearBatch(both, 2);
  for (float v : y0) ASSERT_EQ(v, 0.0f);
  for (float v : y1) ASSERT_EQ(v, 32.0f);  // 64 inputs of 1 · 0.5
}

TEST_P(LinearTier, StreamedTilesEqualStoredOnes) {
  // PanelCall::stream lets a kernel write whole, aligned rows past the caches: the same bits as
  // stored normally, and rows that are partial or unaligned are still written as asked.
  const cpu::TierKernels& tier = cpu::Kernels();
  const int64_t K = 96;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> wf(kPanelRows * K), x(12 * K);
  for (auto* v : {&wf, &x})
    for (float& e : *v) e = dist(rng);
  std::vector<bf16> wb(wf.size()), panel(PackedElements(kPanelRows, K));
  std::vector<uint8_t> codes(wf.size()), fp8_panel(PackedElements(kPanelRows, K));
  F32ToBf16(wf.data(), wb.data(), wf.size());
  for (size_t i = 0; i < wf.size(); ++i) codes[i] = F32ToFp8E4M3(wf[i]);
  const std::vector<float> scales(Fp8ScaleBlocks(K), 1.0f);
  PackBf16({DType::kBF16, kPanelRows, K, wb.data()}, panel.data());
  PackFp8({DType::kF8E4M3, kPanelRows, K, codes.data(), nullptr, scales.data()}, fp8_panel.data());
  for (int mr : {1, std::min(5, tier.max_mr), tier.max_mr}) {
    // The tokens interleaved as the tier reads them: bf16 pairs [K / 2][mr], or floats [K][mr].
    std::vector<const float*> rows(mr);
    for (int m = 0; m < mr; ++m) rows[m] = x.data() + m * K;
    std::vector<uint32_t> pairs(K / 2 * mr);
    std::vector<float> floats(K * mr);
    if (tier.bf16_activations) tier.pack_bf16_pairs(rows.data(), mr, K, pairs.data());
    for (int64_t k = 0; k < K; ++k)
      for (int m = 0; m < mr; ++m) floats[k * mr + m] = rows[m][k];
    for (bool fp8 : {false, true}) {
      if (fp8 && tier.panel_fp8 == nullptr) continue;
      for (int valid : {32, 17})
        for (int64_t offset : {0, 4}) {  // floats past a cache line's start
          std::vector<FloatBuffer> y(2, FloatBuffer(1024, NAN));  // 4 KB: cache-line aligned (core/buffer.h)
          ASSERT_EQ(reinterpret_cast<uintptr_t>(y[1].data()) % 64, 0u);
          for (int v = 0; v < 2; ++v) {
            float* out[12];
            for (int m = 0; m < mr; ++m) out[m] = y[v].data() + offset + m * 32;
            const cpu::PanelCall call{.x = tier.bf16_activations ? static_cast<const void*>(pairs.data()) : floats.data(),
                                      .panel = fp8 ? static_cast<const void*>(fp8_panel.data()) : panel.data(),
                                      .k0 = 0, .kn = K, .scales = scales.data(), .y = out, .mr = mr, .valid = valid,
                                      .accumulate = false, .stream = v == 1};
            (fp8 ? tier.panel_fp8 : tier.panel_bf16)(call);
          }
          for (size_t i = 0; i < y[0].size(); ++i)
            ASSERT_TRUE(std::memcmp(&y[0][i], &y[1][i], sizeof(float)) == 0)
                << (fp8 ? "fp8" : "bf16") << " mr " << mr << " valid " << valid << " offset " << offset << " at " << i;
        }
    }
  }
}

// e4m3 codes of a rows × K weight stepping through every code (`step` a column, `row_step` more
// a row, so rows differ and a kernel mixing them up is seen), NaN's replaced by 0.
std::vector<uint8_t> CyclingCodes(int64_t rows, int64_t K, int64_t step, int64_t row_step) {
  std::vector<uint8_t> codes(rows * K);
  for (size_t i = 0; i < codes.size(); ++i) {
    codes[i] = static_cast<uint8_t>((i * step + i / K * row_step) % 256);
    if ((codes[i] & 0x7f) == 0x7f) codes[i] = 0;  // not NaN
  }
  return codes;
}

TEST_P(LinearTier, DecodedFp8PanelsEqualCodePanels) {
  // decode_fp8 once, then panel_fp8_decoded per token block: bitwise what panel_fp8 gives on the
  // codes, for every code (subnormals and negatives included), token count, partial panel,
  // accumulation and a chunk starting inside the weight.
  const cpu::TierKernels& tier = cpu::Kernels();
  if (tier.decode_fp8 == nullptr) GTEST_SKIP() << "tier " << CpuIsaName(tier.isa) << " decodes FP8 per block";
  const int64_t K = 512, k0 = 128;  // the chunk [k0, K): three scale blocks
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> dist(-1, 1);
  const std::vector<uint8_t> codes = CyclingCodes(kPanelRows, K, 7, 13);
  std::vector<uint8_t> panel(PackedElements(kPanelRows, K));
  const std::vector<float> scales = {0.5f, 3e-3f, 17.0f, 1e-5f};
  PackFp8({DType::kF8E4M3, kPanelRows, K, codes.data(), nullptr, scales.data()}, panel.data());
  std::vector<uint16_t> decoded((K - k0) / 2 * kPanelPair);
  tier.decode_fp8(panel.data() + k0 / 2 * kPanelPair, (K - k0) / 2, decoded.data());
  std::vector<float> x(tier.max_mr * K);
  for (float& e : x) e = dist(rng);
  for (int mr = 1; mr <= tier.max_mr; ++mr) {
    std::vector<const float*> rows(mr);
    for (int m = 0; m < mr; ++m) rows[m] = x.data() + m * K + k0;
    std::vector<uint32_t> pairs((K - k0) / 2 * mr);
    std::vector<float> floats((K - k0) * mr);
    if (tier.bf16_activations) tier.pack_bf16_pairs(rows.data(), mr, K - k0, pairs.data());
    for (int64_t k = 0; k < K - k0; ++k)
      for (int m = 0; m < mr; ++m) floats[k * mr + m] = rows[m][k];
    for (int valid : {32, 17})
      for (bool accumulate : {false, true}) {
        std::vector<std::vector<float>> y(2, std::vector<float>(mr * 32));
        for (int v = 0; v < 2; ++v) {
          for (size_t i = 0; i < y[v].size(); ++i) y[v][i] = 0.25f * static_cast<float>(i % 5);
          float* out[16];
          for (int m = 0; m < mr; ++m) out[m] = y[v].data() + m * 32;
          const cpu::PanelCall call{.x = tier.bf16_activations ? static_cast<const void*>(pairs.data()) : floats.data(),
                                    .panel = v == 0 ? static_cast<const void*>(panel.data() + k0 / 2 * kPanelPair) : decoded.data(),
                                    .k0 = k0, .kn = K - k0, .scales = scales.data(), .y = out, .mr = mr, .valid = valid,
                                    .accumulate = accumulate, .stream = false};
          (v == 0 ? tier.panel_fp8 : tier.panel_fp8_decoded)(call);
        }
        ASSERT_EQ(std::memcmp(y[0].data(), y[1].data(), y[0].size() * sizeof(float)), 0)
            << "mr " << mr << " valid " << valid << " accumulate " << accumulate;
      }
  }
}

TEST_P(LinearTier, PairedFp8PanelsEqualOnePanelAtATime) {
  // panel_fp8_pair: one token over two panels in one call, bitwise what panel_fp8 gives on each
  // panel alone, for every code, several scale blocks, a chunk starting inside the weight, and
  // accumulation into y.
  const cpu::TierKernels& tier = cpu::Kernels();
  if (tier.panel_fp8_pair == nullptr) GTEST_SKIP() << "tier " << CpuIsaName(tier.isa) << " runs FP8 one panel a call";
  const int64_t K = 512, k0 = 128, rows = 2 * kPanelRows;
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> dist(-1, 1);
  const std::vector<uint8_t> codes = CyclingCodes(rows, K, 11, 37);
  std::vector<uint8_t> panels(PackedElements(rows, K));
  const std::vector<float> scales = {0.5f, 3e-3f, 17.0f, 1e-5f};  // one row of blocks: both panels share it
  PackFp8({DType::kF8E4M3, rows, K, codes.data(), nullptr, scales.data()}, panels.data());
  std::vector<float> x(K);
  for (float& e : x) e = dist(rng);
  std::vector<uint32_t> pairs((K - k0) / 2);
  if (tier.bf16_activations) {
    const float* row = x.data() + k0;
    tier.pack_bf16_pairs(&row, 1, K - k0, pairs.data());
  }
  const int64_t panel_bytes = K * kPanelRows;
  for (bool accumulate : {false, true}) {
    std::vector<std::vector<float>> y(2, std::vector<float>(rows));
    for (int v = 0; v < 2; ++v) {
      for (int64_t i = 0; i < rows; ++i) y[v][i] = 0.25f * static_cast<float>(i % 5);
      cpu::PanelCall call{.x = tier.bf16_activations ? static_cast<const void*>(pairs.data()) : x.data() + k0,
                          .panel = panels.data() + k0 / 2 * kPanelPair, .k0 = k0, .kn = K - k0, .scales = scales.data(),
                          .y = nullptr, .mr = 1, .valid = 32, .accumulate = accumulate, .stream = false};
      if (v == 0) {
        for (int p = 0; p < 2; ++p) {
          float* out = y[0].data() + p * kPanelRows;
          call.y = &out;
          call.panel = panels.data() + p * panel_bytes + k0 / 2 * kPanelPair;
          tier.panel_fp8(call);
        }
      } else {
        float* out = y[1].data();
        call.y = &out;
        call.next_panel = panel_bytes;
        tier.panel_fp8_pair(call);
      }
    }
    ASSERT_EQ(std::memcmp(y[0].data(), y[1].data(), rows * sizeof(float)), 0) << "accumulate " << accumulate;
  }
}

TEST_P(LinearTier, StreamedBatchEqualsEachRowAlone) {
  // A batch past StreamedOutputBytes: every row as the row alone gives it (a few bytes of output,
  // stored normally), over several threads' work.
  const int64_t k = 64, n = 96, m = StreamedOutputBytes() / (n * 4) + 13;
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> x(m * k), wf(n * k);
  for (auto* v : {&x, &wf})
    for (float& e : *v) e = dist(rng);
  std::vector<bf16> wb(wf.size()), panels(PackedElements(n, k));
  F32ToBf16(wf.data(), wb.data(), wf.size());
  WeightView w{DType::kBF16, n, k, wb.data()};
  PackBf16(w, panels.data());
  w.packed = panels.data();
  FloatBuffer all(m * n, NAN);
  Linear(x.data(), m, w, all.data());
  std::vector<float> one(n);
  for (int64_t i = 0; i < m; i += 7) {  // every 7th row: each token block and each thread's share
    Linear(x.data() + i * k, 1, w, one.data());
    for (int64_t j = 0; j < n; ++j) ASSERT_EQ(one[j], all[i * n + j]) << "row " << i << " of " << m;
  }
}

DAEDALUS_EACH_CPU_TIER(LinearTier);

TEST(Fp8Decode, TableAndShiftDecodersGiveTheSameBits) {
  // The avx512bf16 tier decodes FP8 by byte tables where AVX512_VBMI exists (accumulating the
  // panel's rows in permuted lanes) and by shifts elsewhere: every output must be bitwise equal.
  if (!MissingCpuFeatures(CpuIsa::kAvx512Bf16).empty() || !HasAvx512Vbmi())
    GTEST_SKIP() << "needs avx512bf16 and avx512_vbmi";
  const cpu::TierKernels &table = cpu::Avx512Bf16Kernels(), &shift = cpu::Avx512Bf16KernelsWithoutVbmi();
  ASSERT_NE(table.panel_fp8, shift.panel_fp8);
  std::mt19937 rng(11);
  const int64_t K = 640;  // five scale blocks
  std::vector<uint8_t> panel(kPanelRows * K);
  for (auto& c : panel) c = static_cast<uint8_t>(rng() % 127 | (rng() % 2 ? 0x80 : 0));  // every finite code
  std::vector<float> scales = {0.5f, 3.0f, 0.01f, 100.0f, 1.0f};
  std::vector<uint32_t> x(K / 2 * 12);
  for (auto& v : x) v = static_cast<uint32_t>(F32ToBf16(static_cast<float>(rng() % 2001) / 1000 - 1)) << 16 |
                        F32ToBf16(static_cast<float>(rng() % 2001) / 1000 - 1);
  for (int mr : {1, 5, 12})
    for (int valid : {32, 17, 3})
      for (int64_t k0 : {int64_t{0}, int64_t{128}, int64_t{192}})
        for (bool accumulate : {false, true}) {
          std::vector<std::vector<float>> y(2, std::vector<float>(12 * 32));
          for (auto& rows : y)
            for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>(i % 7) - 3;
          for (int v = 0; v < 2; ++v) {
            float* rows[12];
            for (int m = 0; m < mr; ++m) rows[m] = y[v].data() + m * 32;
            const cpu::PanelCall call{.x = x.data() + k0 / 2 * mr, .panel = panel.data() + k0 / 2 * kPanelPair, .k0 = k0,
                                      .kn = K - k0, .scales = scales.data(), .y = rows, .mr = mr, .valid = valid,
                                      .accumulate = accumulate, .stream = false};
            (v == 0 ? table : shift).panel_fp8(call);
          }
          for (size_t i = 0; i < y[0].size(); ++i)
            ASSERT_EQ(y[0][i], y[1][i]) << "mr " << mr << " valid " << valid << " k0 " << k0 << " at " << i;
        }
  // The chunk decoders of products with many token blocks: the same bf16 panel, each weight
  // exactly its code's value.
  std::vector<uint16_t> by_table(panel.size()), by_shift(panel.size());
  table.decode_fp8(panel.data(), K / 2, by_table.data());
  shift.decode_fp8(panel.data(), K / 2, by_shift.data());
  for (size_t i = 0; i < panel.size(); ++i) {
    ASSERT_EQ(by_table[i], by_shift[i]) << "at " << i;
    ASSERT_EQ(Bf16ToF32(by_table[i]), Fp8E4M3ToF32(panel[i])) << "code " << int{panel[i]};
  }
}

TEST(CpuIsa, UnavailableTierIsAClearError) {
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16, CpuIsa::kAmx}) {
    const std::string missing = MissingCpuFeatures(isa);
    const absl::Status s = SelectCpuIsa(isa);
    EXPECT_EQ(s.ok(), missing.empty()) << CpuIsaName(isa);
    if (!s.ok()) {
      EXPECT_NE(s.message().find(CpuIsaName(isa)), std::string::npos) << s.message();
      EXPECT_NE(s.message().find(missing), std::string::npos) << s.message();
    }
  }
  EXPECT_TRUE(SelectCpuIsa(DetectedCpuIsa()).ok());
  EXPECT_FALSE(ParseCpuIsa("avx9000").ok());
}

}  // namespace
}  // namespace daedalus
