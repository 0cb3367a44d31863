// Linear against the double-precision triple loop, over shapes that hit every tile and tail.
#include "kernels/linear.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace daedalus {
namespace {

struct Shape {
  int64_t m, n, k;
};

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
  LinearReference(x.data(), s.m, w, want.data());
  // Float accumulation over k terms of magnitude <= 1: error grows like sqrt(k)·eps.
  const float tol = 1e-5f * std::sqrt(static_cast<float>(s.k)) * 4;
  for (int64_t i = 0; i < s.m * s.n; ++i) {
    ASSERT_NEAR(got[i], want[i], tol) << DTypeName(dtype) << " m=" << s.m << " n=" << s.n << " k=" << s.k << " at " << i;
  }
}

// Shapes cover every token count of the kernel (1-12 and more), partial panels (rows not a
// multiple of 32, fewer than 16), and inputs split into several k passes (> 1024).
const Shape kShapes[] = {{1, 1, 32},   {1, 7, 64},   {3, 64, 96},  {4, 5, 128},   {5, 67, 256},  {12, 33, 64},
                         {13, 48, 20}, {17, 33, 64}, {100, 20, 32}, {130, 9, 160}, {2, 6, 40},   {3, 3, 7},
                         {1, 40, 2500}, {25, 70, 2049}};

TEST(Linear, PackedBf16MatchesReference) {
  for (Shape s : kShapes) Check(DType::kBF16, s);
}

TEST(Linear, UnpackedBf16MatchesReference) {
  for (Shape s : {Shape{1, 7, 64}, Shape{17, 33, 65}}) Check(DType::kBF16, s, /*packed=*/false);
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
  for (auto& c : codes) c = static_cast<uint8_t>((code(rng) % 127) | (code(rng) % 2 ? 0x80 : 0));  // magnitude 0x7f is NaN
  const int64_t sr = (s.n + 127) / 128, sc = (s.k + 127) / 128;
  std::vector<float> scales(sr * sc);
  for (auto& v : scales) v = std::ldexp(1.0f + dist(rng) / 2, -8 - static_cast<int>(code(rng) % 4));
  WeightView w{DType::kF8E4M3, s.n, s.k, codes.data()};
  w.scale_inv = scales.data();
  std::vector<float> want(s.m * s.n), got(s.m * s.n, NAN);
  LinearReference(x.data(), s.m, w, want.data());
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

TEST(Linear, PackedFp8MatchesReference) {
  for (Shape s : {Shape{1, 40, 300}, Shape{5, 129, 256}, Shape{12, 200, 130}, Shape{30, 33, 1100}}) CheckFp8(s);
}

TEST(Linear, F32MatchesReference) {
  for (Shape s : {Shape{1, 1, 32}, Shape{3, 64, 96}, Shape{17, 33, 65}, Shape{100, 20, 7}}) Check(DType::kF32, s);
}

TEST(Linear, RowResultsDoNotDependOnBatch) {
  // A token's output must not change with what else is in the batch (bitwise, for bf16).
  const int64_t n = 48, k = 1500;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> x(30 * k), wf(n * k);
  for (auto& v : x) v = dist(rng);
  for (auto& v : wf) v = dist(rng);
  std::vector<bf16> wb(wf.size());
  F32ToBf16(wf.data(), wb.data(), wf.size());
  WeightView w{DType::kBF16, n, k, wb.data()};
  std::vector<bf16> panels(PackedElements(n, k));
  PackBf16(w, panels.data());
  w.packed = panels.data();
  std::vector<float> all(30 * n), one(n);
  Linear(x.data(), 30, w, all.data());  // blocks of 12, 12 and 6 tokens
  for (int64_t i = 0; i < 30; ++i) {
    Linear(x.data() + i * k, 1, w, one.data());
    for (int64_t j = 0; j < n; ++j) ASSERT_EQ(one[j], all[i * n + j]) << "row " << i;
  }
}

}  // namespace
}  // namespace daedalus
