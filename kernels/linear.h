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
  const void* data = nullptr;  // [rows, cols], row-major, no alignment required; may be null when packed is set
  // BF16 only: the same weight in panel layout (PackBf16), which the fast kernel reads.
  const bf16* packed = nullptr;

  size_t bytes() const { return static_cast<size_t>(rows * cols) * DTypeSize(dtype); }
  float at(int64_t r, int64_t c) const;  // one element as float (slow; tests and tails)
};

// Panel layout of a BF16 weight: 32 output rows per panel; within a panel, for each input k,
// 32 values in one 64-byte line, row i in the low and row 16 + i in the high half of 32-bit
// lane i, so that `lane << 16` and `lane & 0xffff0000` are rows 0-15 and 16-31 as floats.
// Rows past the end are zero. PackedBf16Elements gives the size of `out`.
constexpr int64_t kPanelRows = 32;
int64_t PackedBf16Elements(int64_t rows, int64_t cols);
void PackBf16(const WeightView& w, bf16* out);

// y[m, w.rows] = x[m, w.cols] · wᵀ. x and y are dense row-major and must not overlap.
// Multithreaded over output features with OpenMP. Packed BF16 weights go through our AVX-512
// kernel (widened to float in registers, float accumulation); F32 weights through BLAS;
// unpacked BF16 through a portable loop. Each output element is accumulated over k in the
// same order whatever m is, so a token's result does not depend on the rest of the batch.
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
