// y = x · Wᵀ for a weight stored [out, in] (the checkpoint's layout), activations in float.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "kernels/panel_layout.h"

namespace daedalus {

// A 2-D weight in memory the caller owns (often the mmapped checkpoint).
struct WeightView {
  DType dtype = DType::kF32;  // kF32, kBF16 or kF8E4M3
  int64_t rows = 0;           // out features
  int64_t cols = 0;           // in features
  const void* data = nullptr;  // [rows, cols] as stored, row-major, unaligned; may be null once packed
  // kBF16 and kF8E4M3: the same weight in panel layout (PackBf16 / PackFp8): what the fast
  // kernels read. FP8 weights need it (there is no unpacked FP8 path).
  const void* packed = nullptr;
  // kF8E4M3: block scales [ceil(rows/128), ceil(cols/128)]; w[r, c] = value(code) · scale.
  const float* scale_inv = nullptr;

  size_t bytes() const;                  // of the weights as the kernels read them
  float at(int64_t r, int64_t c) const;  // one element as float (slow; tests and tails)
  uint8_t fp8_code(int64_t r, int64_t c) const;  // kF8E4M3: element (r, c)'s code, packed or as stored
};

constexpr int64_t kFp8Block = 128;   // FP8 scale blocks are 128 × 128
// Scale blocks along a dimension of n elements (the last one may be partial).
constexpr int64_t Fp8ScaleBlocks(int64_t n) { return (n + kFp8Block - 1) / kFp8Block; }

// The panel layout (kernels/panel_layout.h) of a BF16 weight, or of FP8 e4m3 codes; `out` holds
// PackedElements(rows, cols) elements. FP8 decoding assumes finite codes (0x7f/0xff, NaN, do not
// occur in checkpoints); the float kernels fold 2^120 into each block scale, so scales must stay
// below 2^7 (FitsFp8Kernel).
void PackBf16(const WeightView& w, bf16* out);
void PackFp8(const WeightView& w, uint8_t* out);
bool FitsFp8Kernel(const float* scale_inv, int64_t n_scales);

// y[m, w.rows] = x[m, w.cols] · wᵀ. x and y are dense row-major and must not overlap.
// Multithreaded over output features with OpenMP. Packed BF16 and FP8 weights go through the
// kernels of the active CPU tier (kernels/cpu_isa.h): widened to float with float FMA, or, with
// AVX512_BF16, activations rounded to bf16 and VDPBF16PS; float accumulation either way. F32
// weights go through BLAS; unpacked BF16 through a portable loop. Each output element is
// accumulated over k in the same order whatever m is, so a token's result does not depend on
// the rest of the batch (on a given tier).
void Linear(const float* x, int64_t m, const WeightView& w, float* y);

// Independent products run together in one parallel region (one barrier for all): the
// experts of an MoE layer, or projections that read the same input.
struct LinearProblem {
  const float* x;
  int64_t m;
  WeightView w;
  float* y;
  // Optional gather and scatter: row i of x is x_rows[i] and row i of y is y_rows[i] instead
  // of x + i·w.cols and y + i·w.rows (rows received from other ranks are used in place).
  const float* const* x_rows = nullptr;
  float* const* y_rows = nullptr;

  const float* x_row(int64_t i) const { return x_rows != nullptr ? x_rows[i] : x + i * w.cols; }
  float* y_row(int64_t i) const { return y_rows != nullptr ? y_rows[i] : y + i * w.rows; }
};
void LinearBatch(const LinearProblem* problems, int64_t n);
// A batch whose outputs exceed this many bytes (the threads' L2 caches together) writes them
// past the caches, with non-temporal stores where a tier has them: stored normally, each output
// line would first be read from memory and leave the cache again before the next op reads it.
// A 512-token prefill's expert products (12 MB of outputs a layer) ran 4-6% faster so, the
// prefill 3.5-6% (AMD EPYC, avx512bf16, 2 threads). The results are the same bits.
int64_t StreamedOutputBytes();

// The plain triple loop with double accumulation: the reference for tests.
void LinearReference(const float* x, int64_t m, const WeightView& w, float* y);

}  // namespace daedalus
