// y = x · Wᵀ for a weight stored [out, in] (the checkpoint's layout), activations in float.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace daedalus {

// A 2-D weight in memory the caller owns (often the mmapped checkpoint).
struct WeightView {
  DType dtype = DType::kF32;  // kF32 or kBF16 (FP8 is dequantized to BF16 at load)
  int64_t rows = 0;           // out features
  int64_t cols = 0;           // in features
  const void* data = nullptr;  // [rows, cols], row-major, no alignment required

  size_t bytes() const { return static_cast<size_t>(rows * cols) * DTypeSize(dtype); }
  float at(int64_t r, int64_t c) const;  // one element as float (slow; tests and tails)
};

// y[m, w.rows] = x[m, w.cols] · wᵀ. x and y are dense row-major and must not overlap.
// Multithreaded over output features with OpenMP. BF16 weights go through our AVX-512 kernel
// (converted to float in registers); F32 weights through BLAS.
void Linear(const float* x, int64_t m, const WeightView& w, float* y);

// Independent products run together in one parallel region (one barrier for all): the
// experts of an MoE layer, or projections that read the same input.
struct LinearProblem {
  const float* x;
  int64_t m;
  WeightView w;
  float* y;
};
void LinearBatch(const LinearProblem* problems, int64_t n);

// The plain triple loop with double accumulation: the reference for tests.
void LinearReference(const float* x, int64_t m, const WeightView& w, float* y);

}  // namespace daedalus
