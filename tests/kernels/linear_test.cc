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

void Check(DType dtype, const Shape& s) {
  std::mt19937 rng(static_cast<unsigned>(s.m * 1000003 + s.n * 101 + s.k));
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> x(s.m * s.k), wf(s.n * s.k);
  for (auto& v : x) v = dist(rng);
  for (auto& v : wf) v = dist(rng);
  std::vector<bf16> wb(wf.size());
  F32ToBf16(wf.data(), wb.data(), wf.size());
  WeightView w{dtype, s.n, s.k, dtype == DType::kBF16 ? static_cast<const void*>(wb.data()) : wf.data()};
  std::vector<float> got(s.m * s.n, NAN), want(s.m * s.n);
  Linear(x.data(), s.m, w, got.data());
  LinearReference(x.data(), s.m, w, want.data());
  // Float accumulation over k terms of magnitude <= 1: error grows like sqrt(k)·eps.
  const float tol = 1e-5f * std::sqrt(static_cast<float>(s.k)) * 4;
  for (int64_t i = 0; i < s.m * s.n; ++i) {
    ASSERT_NEAR(got[i], want[i], tol) << DTypeName(dtype) << " m=" << s.m << " n=" << s.n << " k=" << s.k << " at " << i;
  }
}

TEST(Linear, Bf16MatchesReference) {
  for (Shape s : {Shape{1, 1, 32}, Shape{1, 7, 64}, Shape{3, 64, 96}, Shape{4, 5, 128}, Shape{5, 67, 256},
                  Shape{17, 33, 64}, Shape{100, 20, 32}, Shape{130, 9, 160}, Shape{2, 6, 40}, Shape{3, 3, 7}}) {
    Check(DType::kBF16, s);
  }
}

TEST(Linear, F32MatchesReference) {
  for (Shape s : {Shape{1, 1, 32}, Shape{3, 64, 96}, Shape{17, 33, 65}, Shape{100, 20, 7}}) Check(DType::kF32, s);
}

TEST(Linear, RowResultsDoNotDependOnBatch) {
  // A token's output must not change with what else is in the batch (bitwise, for bf16).
  const int64_t n = 48, k = 128;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> x(9 * k), wf(n * k);
  for (auto& v : x) v = dist(rng);
  for (auto& v : wf) v = dist(rng);
  std::vector<bf16> wb(wf.size());
  F32ToBf16(wf.data(), wb.data(), wf.size());
  WeightView w{DType::kBF16, n, k, wb.data()};
  std::vector<float> all(9 * n), one(n);
  Linear(x.data(), 9, w, all.data());
  for (int64_t i = 0; i < 9; ++i) {
    Linear(x.data() + i * k, 1, w, one.data());
    for (int64_t j = 0; j < n; ++j) ASSERT_EQ(one[j], all[i * n + j]) << "row " << i;
  }
}

}  // namespace
}  // namespace daedalus
