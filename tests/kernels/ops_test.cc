#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "gtest/gtest.h"
#include "tests/kernels/tiers.h"

namespace daedalus {
namespace {

TEST(RotateInterleaved, IsComplexMultiplicationOfAdjacentPairs) {
  std::vector<float> v = {1, 2, 3, 4, -5, 6};
  const std::vector<float> angle = {0.3f, -1.2f, 2.5f};
  std::vector<float> cos(3), sin(3);
  for (int i = 0; i < 3; ++i) {
    cos[i] = std::cos(angle[i]);
    sin[i] = std::sin(angle[i]);
  }
  std::vector<float> got = v;
  RotateInterleaved(got.data(), 6, cos.data(), sin.data());
  for (int i = 0; i < 3; ++i) {
    std::complex<double> z(v[2 * i], v[2 * i + 1]);
    z *= std::polar(1.0, static_cast<double>(angle[i]));
    EXPECT_NEAR(got[2 * i], z.real(), 1e-5);
    EXPECT_NEAR(got[2 * i + 1], z.imag(), 1e-5);
  }
}

TEST(RmsNorm, MatchesDefinition) {
  const std::vector<float> x = {1, -2, 3, 0.5f, 7, -1, 0, 2};
  const std::vector<float> g = {1, 2, 0.5f, 1, 1, 1, 3, 1};
  std::vector<float> y(8);
  RmsNorm(x.data(), g.data(), 2, 4, 1e-6f, y.data(), 4, 4);
  for (int r = 0; r < 2; ++r) {
    double ms = 0;
    for (int i = 0; i < 4; ++i) ms += x[r * 4 + i] * x[r * 4 + i] / 4.0;
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[r * 4 + i], x[r * 4 + i] / std::sqrt(ms + 1e-6) * g[i], 1e-5);
  }
}

class OpsTier : public testing::EachCpuTier {};

TEST_P(OpsTier, SoftmaxMatchesDefinitionAndIsStableForLargeInputs) {
  std::vector<float> v = {1000, 1001, 999};
  Softmax(v.data(), 3);
  const double z = std::exp(-1.0) + 1 + std::exp(-2.0);
  EXPECT_NEAR(v[1], 1 / z, 1e-6);
  EXPECT_NEAR(v[0], std::exp(-1.0) / z, 1e-6);
  EXPECT_NEAR(v[2], std::exp(-2.0) / z, 1e-6);
  // Lengths that leave vector tails, against double sums.
  for (int64_t n : {1, 15, 16, 17, 100, 513}) {
    std::vector<float> x(n);
    for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(20 * std::sin(0.7 * static_cast<double>(i)));
    std::vector<double> want(x.begin(), x.end());
    const double m = *std::max_element(want.begin(), want.end());
    double sum = 0;
    for (double& w : want) sum += (w = std::exp(w - m));
    Softmax(x.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(x[i], want[i] / sum, 1e-6) << "n " << n << " at " << i;
  }
}

TEST_P(OpsTier, ExpMatchesStdExpToTwoUlpsOverTheRange) {
  std::vector<float> v;
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) v.push_back(x);
  std::vector<float> got = v;
  ExpInPlace(got.data(), static_cast<int64_t>(got.size()));
  for (size_t i = 0; i < v.size(); ++i) {
    const double want = std::exp(static_cast<double>(v[i]));
    ASSERT_NEAR(got[i] / want, 1.0, 2.5e-7) << "x = " << v[i];
  }
}

// A block of attention scores: scaled to their maximum, then e^(v − shift), rounded to bf16 when
// asked, and summed within float error of the double sum.
TEST_P(OpsTier, ScoreBlockStepsMatchDefinition) {
  for (const int64_t n : {1, 16, 37, 64}) {
    std::vector<float> v(n);
    for (int64_t j = 0; j < n; ++j) v[j] = static_cast<float>(3 * std::sin(0.7 * j));
    const std::vector<float> raw = v;
    const float max = ScaleScores(v.data(), n, 0.125f);
    float want_max = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      ASSERT_EQ(v[j], raw[j] * 0.125f) << "n " << n << " at " << j;
      want_max = std::max(want_max, v[j]);
    }
    ASSERT_EQ(max, want_max) << "n " << n;
    for (const bool bf16 : {false, true}) {
      std::vector<float> e = v;
      const float sum = ExpScores(e.data(), n, max + 0.5f, bf16);
      double want_sum = 0;
      for (int64_t j = 0; j < n; ++j) {
        const double want = std::exp(static_cast<double>(v[j] - (max + 0.5f)));
        ASSERT_NEAR(e[j] / want, 1.0, bf16 ? 1.0 / 256 : 2.5e-7) << "n " << n << " at " << j;
        if (bf16) {
          ASSERT_EQ(e[j], Bf16ToF32(F32ToBf16(e[j]))) << "n " << n << " at " << j;
        }
        want_sum += e[j];
      }
      ASSERT_NEAR(sum, want_sum, 1e-6 * want_sum) << "n " << n;
    }
  }
}

// The tiers' vectorised score steps and bf16 rounding give the portable loops' bits: the same
// operations per element, the sum in the documented lane order, and F32ToBf16's rounding for
// every class of float (ties either way, subnormals, infinities, NaN).
TEST_P(OpsTier, ScoreBlockStepsAndBf16RoundingEqualThePortableLoopsBitwise) {
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (const int64_t n : {1, 15, 16, 17, 64, 80, 203}) {
    std::vector<float> v(n);
    for (int64_t j = 0; j < n; ++j) v[j] = normal(gen);
    std::vector<float> want = v;
    const float max = ScaleScores(v.data(), n, 0.1353f);
    float want_max = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      want[j] *= 0.1353f;
      want_max = std::max(want_max, want[j]);
    }
    ASSERT_EQ(std::memcmp(v.data(), want.data(), n * sizeof(float)), 0) << "n " << n;
    ASSERT_EQ(max, want_max) << "n " << n;
    for (const bool bf16 : {false, true}) {
      std::vector<float> e = v, e_want = v;
      const float sum = ExpScores(e.data(), n, max, bf16);
      for (float& x : e_want) x -= max;
      ExpInPlace(e_want.data(), n);
      float lanes[16] = {};
      for (int64_t j = 0; j < n; ++j) {
        if (bf16) e_want[j] = Bf16ToF32(F32ToBf16(e_want[j]));
        lanes[j % 16] += e_want[j];
      }
      for (int64_t width = 8; width >= 1; width /= 2)
        for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
      ASSERT_EQ(std::memcmp(e.data(), e_want.data(), n * sizeof(float)), 0) << "n " << n << " bf16 " << bf16;
      ASSERT_EQ(sum, lanes[0]) << "n " << n << " bf16 " << bf16;
    }
  }
  std::vector<float> in;
  for (uint32_t high = 0; high < 65536; high += 1)
    for (const uint32_t low : {0x0000u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      const uint32_t bits = high << 16 | low;
      float f;
      std::memcpy(&f, &bits, 4);
      in.push_back(f);
    }
  const int64_t n = static_cast<int64_t>(in.size()) - 3;  // a tail on every tier
  std::vector<uint16_t> out(in.size(), 0x1234);
  RoundBf16(in.data(), n, out.data());
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out[i], F32ToBf16(in[i])) << "element " << i;
  EXPECT_EQ(out[n], 0x1234) << "wrote past n";
}

TEST_P(OpsTier, SiluMulMatchesDefinition) {
  std::vector<float> gate, up, out(41);
  for (int i = 0; i < 41; ++i) {
    gate.push_back(-10.0f + 0.5f * i);
    up.push_back(0.25f * i - 3.0f);
  }
  SiluMulSeparate(gate.data(), up.data(), 1, 41, out.data());  // 41: a vector tail on every tier
  for (int i = 0; i < 41; ++i) {
    const double g = gate[i], want = g / (1 + std::exp(-g)) * up[i];
    EXPECT_NEAR(out[i], want, 1e-6 * (1 + std::fabs(want))) << i;
  }
}

// Attention scores three ways: one key at a time (Dot), eight keys at a time over rows (DotRows)
// and sixteen keys to a lane block (DotKeys16), against double sums; and a key's score must not
// depend on how many keys are scored with it (bitwise), as a row of a prefill chunk sees a
// different number of keys than its neighbours.
TEST_P(OpsTier, AttentionScoresMatchReferenceAndDoNotDependOnKeyCount) {
  for (int64_t dim : {7, 32, 96, 288}) {
    const int64_t n = 53, stride = dim + 3;
    std::vector<float> q(dim), rows(n * stride), keys(KeysElements(n, dim)), by_rows(n), by_keys(n);
    for (int64_t i = 0; i < dim; ++i) q[i] = std::sin(0.37 * i + dim);
    for (int64_t i = 0; i < n * stride; ++i) rows[i] = std::cos(0.11 * i);
    PackKeys16(rows.data(), stride, n, dim, keys.data());
    DotRows(q.data(), rows.data(), stride, n, dim, by_rows.data());
    DotKeys16(q.data(), keys.data(), n, dim, by_keys.data());
    for (int64_t j = 0; j < n; ++j) {
      double want = 0;
      for (int64_t i = 0; i < dim; ++i) want += static_cast<double>(q[i]) * rows[j * stride + i];
      const double tol = 1e-6 * dim;
      ASSERT_NEAR(by_rows[j], want, tol) << "DotRows dim " << dim << " key " << j;
      ASSERT_NEAR(by_keys[j], want, tol) << "DotKeys16 dim " << dim << " key " << j;
      ASSERT_NEAR(Dot(q.data(), &rows[j * stride], dim), want, tol) << "Dot dim " << dim << " key " << j;
    }
    for (int64_t visible : {1, 9, 16, 17, 40}) {
      std::vector<float> a(visible), b(visible);
      DotRows(q.data(), rows.data(), stride, visible, dim, a.data());
      DotKeys16(q.data(), keys.data(), visible, dim, b.data());
      for (int64_t j = 0; j < visible; ++j) {
        ASSERT_EQ(a[j], by_rows[j]) << "DotRows: key " << j << " scored with " << visible << " keys";
        ASSERT_EQ(b[j], by_keys[j]) << "DotKeys16: key " << j << " scored with " << visible << " keys";
      }
    }
  }
}

// Several queries over the same keys (tokens of a prompt chunk, one head): each query's scores
// bitwise what DotKeys16 gives it alone, for query counts that fill the blocked kernel and leave
// remainders, and key counts that leave partial key blocks.
TEST_P(OpsTier, ManyQueryScoresEqualOneQueryAtATimeBitwise) {
  const int64_t dim = 96, n = 83, out_stride = 90;
  std::vector<float> rows(n * dim), keys(KeysElements(n, dim)), q(11 * dim);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = std::cos(0.13 * static_cast<double>(i));
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.29 * static_cast<double>(i));
  PackKeys16(rows.data(), dim, n, dim, keys.data());
  for (int64_t queries : {1, 4, 5, 6, 8, 11})
    for (int64_t visible : {1, 16, 64, 71, 83}) {
      std::vector<float> many(queries * out_stride), one(visible);
      DotKeys16Many(q.data(), dim, queries, keys.data(), visible, dim, many.data(), out_stride);
      for (int64_t i = 0; i < queries; ++i) {
        DotKeys16(q.data() + i * dim, keys.data(), visible, dim, one.data());
        for (int64_t j = 0; j < visible; ++j)
          ASSERT_EQ(many[i * out_stride + j], one[j]) << queries << " queries, " << visible << " keys: query " << i << " key " << j;
      }
    }
}

// Attention over bf16 rows (tiers with a bf16 dot-product unit): scores and weighted sums against
// double sums of the same bf16 operands (weights rounded to bf16 as the kernel rounds them),
// within float accumulation error; each head and each row bitwise what it gives alone (the tiled
// and the transposed scores); row counts that leave an odd row, dims that leave tails (tiny's 80,
// bench's 288, DeepSeek-V3's 576, and 701: odd, past one chunk of transposed rows) and heads past
// one group of 8.
TEST_P(OpsTier, Bf16RowAttentionMatchesReferenceAndEachHeadAlone) {
  if (!HasBf16Attention()) GTEST_SKIP() << "tier " << CpuIsaName(GetParam()) << " has no bf16 attention kernels";
  for (const int64_t dim : {80, 288, 576, 33, 701}) {
    const int64_t n = 37, heads = 19, stride = dim + 5;
    std::vector<bf16> rows(n * stride), q(heads * dim);
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = F32ToBf16(static_cast<float>(std::cos(0.37 * static_cast<double>(i))));
    for (size_t i = 0; i < q.size(); ++i) q[i] = F32ToBf16(static_cast<float>(std::sin(0.11 * static_cast<double>(i))));
    std::vector<float> w(heads * n);
    for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(0.5 + 0.5 * std::sin(0.7 * static_cast<double>(i)));
    for (const int64_t rows_n : {int64_t{1}, int64_t{16}, int64_t{17}, n}) {
      std::vector<float> scores(heads * n), one(n), lanes(heads * n), lanes_one(n);
      DotRowsBf16Many(q.data(), dim, heads, rows.data(), stride, rows_n, dim, scores.data(), n);
      DotRowsBf16Transposed(q.data(), dim, heads, rows.data(), stride, rows_n, dim, lanes.data(), n);
      std::vector<float> y(heads * dim, 0.25f), y_one(dim);
      AxpyRowsBf16Many(w.data(), n, heads, rows.data(), stride, rows_n, dim, y.data(), dim);
      for (int64_t h = 0; h < heads; ++h) {
        DotRowsBf16Many(q.data() + h * dim, dim, 1, rows.data(), stride, rows_n, dim, one.data(), n);
        DotRowsBf16Transposed(q.data() + h * dim, dim, 1, rows.data(), stride, rows_n, dim, lanes_one.data(), n);
        std::fill(y_one.begin(), y_one.end(), 0.25f);
        AxpyRowsBf16Many(w.data() + h * n, n, 1, rows.data(), stride, rows_n, dim, y_one.data(), dim);
        for (int64_t j = 0; j < rows_n; ++j) {
          double want = 0, magnitude = 0;
          for (int64_t d = 0; d < dim; ++d) {
            const double term = static_cast<double>(Bf16ToF32(q[h * dim + d])) * Bf16ToF32(rows[j * stride + d]);
            want += term;
            magnitude += std::fabs(term);
          }
          ASSERT_NEAR(scores[h * n + j], want, 1e-6 * magnitude + 1e-30) << "dim " << dim << " head " << h << " row " << j;
          ASSERT_EQ(scores[h * n + j], one[j]) << "dim " << dim << " head " << h << " row " << j;
          float alone = 0;  // the row by itself: its score does not depend on the rows beside it
          DotRowsBf16Many(q.data() + h * dim, dim, 1, rows.data() + j * stride, stride, 1, dim, &alone, 1);
          ASSERT_EQ(scores[h * n + j], alone) << "dim " << dim << " head " << h << " row " << j;
          // The transposed scores: one float chain of (dim + 1) / 2 steps, each within 2^-24 of
          // what it adds to; the same alone.
          ASSERT_NEAR(lanes[h * n + j], want, (dim + 1) / 2 * 0x1p-24 * magnitude + 1e-30)
              << "transposed, dim " << dim << " head " << h << " row " << j;
          ASSERT_EQ(lanes[h * n + j], lanes_one[j]) << "transposed, dim " << dim << " head " << h << " row " << j;
          DotRowsBf16Transposed(q.data() + h * dim, dim, 1, rows.data() + j * stride, stride, 1, dim, &alone, 1);
          ASSERT_EQ(lanes[h * n + j], alone) << "transposed, dim " << dim << " head " << h << " row " << j;
        }
        for (int64_t i = 0; i < dim; ++i) {
          double want = 0.25, magnitude = 0.25;
          for (int64_t j = 0; j < rows_n; ++j) {
            const double term = static_cast<double>(Bf16ToF32(F32ToBf16(w[h * n + j]))) * Bf16ToF32(rows[j * stride + i]);
            want += term;
            magnitude += std::fabs(term);
          }
          ASSERT_NEAR(y[h * dim + i], want, 1e-6 * magnitude) << "dim " << dim << " head " << h << " column " << i;
          ASSERT_EQ(y[h * dim + i], y_one[i]) << "dim " << dim << " head " << h << " column " << i;
        }
      }
    }
  }
}

// The FP8 latent cache's dequantization: the exact value of every finite code times the scale,
// one float rounding, whatever the length (vector bodies and tails) or the scale's range.
TEST_P(OpsTier, Fp8ToF32IsTheCodesValueTimesTheScaleBitwise) {
  std::vector<uint8_t> codes;
  for (int c = 0; c < 256; ++c)
    if ((c & 0x7f) != 0x7f) codes.push_back(static_cast<uint8_t>(c));  // 0x7f, 0xff: NaN
  for (const float scale : {1.0f, 0.3713f, 2.5e-3f, 7.9e4f, 1e-30f}) {
    for (const int64_t n : {int64_t{1}, int64_t{7}, int64_t{16}, int64_t{33}, static_cast<int64_t>(codes.size())}) {
      for (int64_t offset : {int64_t{0}, int64_t{5}}) {
        const int64_t len = std::min<int64_t>(n, static_cast<int64_t>(codes.size()) - offset);
        std::vector<float> out(len + 1, -7.0f);
        Fp8ToF32(codes.data() + offset, len, scale, out.data());
        for (int64_t i = 0; i < len; ++i) {
          const float want = Fp8E4M3ToF32(codes[offset + i]) * scale;
          ASSERT_EQ(out[i], want) << "code 0x" << std::hex << int{codes[offset + i]} << std::dec << " scale " << scale;
        }
        EXPECT_EQ(out[len], -7.0f) << "wrote past n = " << len;
      }
    }
  }
}

// One query over a block of rows: each score bitwise the row's score alone (whatever rows share
// the call), and the weighted sum bitwise Axpy row after row (the tier's contract: y[i]'s chain
// is Axpy's), for dims that leave tails and row counts of one and more.
TEST_P(OpsTier, RowKernelsEqualOneRowAndAxpyRowByRowBitwise) {
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> u(-1, 1);
  for (const int64_t dim : {int64_t{7}, int64_t{32}, int64_t{45}, int64_t{256}}) {
    for (const int64_t n : {int64_t{1}, int64_t{13}}) {
      const int64_t stride = dim + 5;
      std::vector<float> rows(n * stride), q(dim), w(n), y0(dim), scores(n);
      for (auto* v : {&rows, &q, &w, &y0})
        for (float& x : *v) x = u(rng);
      std::vector<float> y1 = y0;
      DotRows(q.data(), rows.data(), stride, n, dim, scores.data());
      AxpyRows(w.data(), rows.data(), stride, n, dim, y0.data());
      for (int64_t j = 0; j < n; ++j) {
        float alone = 0;
        DotRows(q.data(), rows.data() + j * stride, stride, 1, dim, &alone);
        ASSERT_EQ(scores[j], alone) << "dim " << dim << " row " << j;
        Axpy(w[j], rows.data() + j * stride, y1.data(), dim);
      }
      for (int64_t i = 0; i < dim; ++i) ASSERT_EQ(y0[i], y1[i]) << "dim " << dim << " rows " << n << " element " << i;
    }
  }
}

// All heads of a token over one block of rows: each head's scores and weighted sum are bitwise
// what the one-query kernels give, for head counts that exercise the blocked and leftover paths.
TEST_P(OpsTier, ManyHeadKernelsEqualOneHeadAtATimeBitwise) {
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(-1, 1);
  for (const int64_t dim : {int64_t{32}, int64_t{256}, int64_t{45}}) {
    for (const int64_t heads : {int64_t{1}, int64_t{2}, int64_t{5}, int64_t{8}, int64_t{12}}) {
      const int64_t n = 13, stride = dim + 7, q_stride = dim + 3, out_stride = n + 2;
      std::vector<float> rows(n * stride), q(heads * q_stride), w(heads * out_stride), y0(heads * dim), y1;
      for (auto* v : {&rows, &q, &w, &y0})
        for (float& x : *v) x = u(rng);
      y1 = y0;
      std::vector<float> many(heads * out_stride, 0.0f), one(n);
      DotRowsMany(q.data(), q_stride, heads, rows.data(), stride, n, dim, many.data(), out_stride);
      AxpyRowsMany(w.data(), out_stride, heads, rows.data(), stride, n, dim, y0.data(), dim);
      for (int64_t h = 0; h < heads; ++h) {
        DotRows(q.data() + h * q_stride, rows.data(), stride, n, dim, one.data());
        for (int64_t j = 0; j < n; ++j) ASSERT_EQ(many[h * out_stride + j], one[j]) << "dim " << dim << " head " << h << " key " << j;
        AxpyRows(w.data() + h * out_stride, rows.data(), stride, n, dim, y1.data() + h * dim);
      }
      for (size_t i = 0; i < y0.size(); ++i) ASSERT_EQ(y0[i], y1[i]) << "dim " << dim << " heads " << heads << " element " << i;
    }
  }
}

// Rows laid out in slices of AxpyRowsColumns columns (the naive MLA form's values), one call a
// slice: each output bitwise what one call over whole rows gives, for value sizes that fill the
// slices and leave a short last one.
TEST_P(OpsTier, WeightedSumsOverColumnSlicesEqualWholeRowsBitwise) {
  std::mt19937 rng(29);
  std::uniform_real_distribution<float> u(-1, 1);
  const int64_t n = 37;
  for (const int64_t dim : {int64_t{40}, int64_t{128}, int64_t{200}}) {
    const int64_t slice = std::min(AxpyRowsColumns(), dim), slices = (dim + slice - 1) / slice;
    for (const int64_t heads : {int64_t{1}, int64_t{4}, int64_t{6}}) {
      std::vector<float> rows(n * dim), w(heads * n), y0(heads * dim), sliced(slices * n * slice);
      for (auto* v : {&rows, &w, &y0})
        for (float& x : *v) x = u(rng);
      for (int64_t c = 0; c < slices; ++c)
        for (int64_t j = 0; j < n; ++j)
          for (int64_t i = 0; i < std::min(slice, dim - c * slice); ++i)
            sliced[(c * n + j) * slice + i] = rows[j * dim + c * slice + i];
      std::vector<float> y1 = y0;
      AxpyRowsMany(w.data(), n, heads, rows.data(), dim, n, dim, y0.data(), dim);
      for (int64_t c = 0; c < slices; ++c)
        AxpyRowsMany(w.data(), n, heads, sliced.data() + c * n * slice, slice, n, std::min(slice, dim - c * slice),
                     y1.data() + c * slice, dim);
      for (size_t i = 0; i < y0.size(); ++i)
        ASSERT_EQ(y0[i], y1[i]) << "dim " << dim << " heads " << heads << " slice " << slice << " element " << i;
    }
  }
}

// The bf16 latent cache's rows: every 16-bit pattern widens to the float with those upper bits.
TEST_P(OpsTier, WidenBf16IsExactForEveryPattern) {
  std::vector<uint16_t> in(65536 + 5);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint16_t>(i * 40503u);  // odd: every value once
  for (const int64_t offset : {int64_t{0}, int64_t{3}}) {
    const int64_t n = static_cast<int64_t>(in.size()) - offset - 1;
    std::vector<float> out(n + 1, -7.0f);
    WidenBf16(in.data() + offset, n, out.data());
    for (int64_t i = 0; i < n; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &out[i], 4);
      ASSERT_EQ(bits, static_cast<uint32_t>(in[offset + i]) << 16) << "pattern " << in[offset + i];
    }
    EXPECT_EQ(out[n], -7.0f) << "wrote past n";
  }
}

DAEDALUS_EACH_CPU_TIER(OpsTier);

}  // namespace
}  // namespace daedalus
