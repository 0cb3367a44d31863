// CPU GEMM for bf16 weights: weights stay bf16 in memory (half the bytes of float) and are
// widened in registers. A 32-bit lane of bf16 data holds elements 2i (low half) and 2i+1
// (high half): `lane << 16` is element 2i as float and `lane & 0xffff0000` is element 2i+1,
// so the activations are permuted once per call into [even 16 | odd 16] per 32-element chunk
// and no shuffles are needed in the inner loop.
// GCC 12 warns falsely inside its own _mm512_reduce_add_ps (an undefined upper half it never reads).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "kernels/linear.h"

namespace daedalus {

float WeightView::at(int64_t r, int64_t c) const {
  const int64_t i = r * cols + c;
  if (dtype == DType::kBF16) {
    bf16 v;
    std::memcpy(&v, static_cast<const uint8_t*>(data) + 2 * i, 2);
    return Bf16ToF32(v);
  }
  float v;
  std::memcpy(&v, static_cast<const uint8_t*>(data) + 4 * i, 4);
  return v;
}

void LinearReference(const float* x, int64_t m, const WeightView& w, float* y) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t n = 0; n < w.rows; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < w.cols; ++k) acc += static_cast<double>(x[i * w.cols + k]) * w.at(n, k);
      y[i * w.rows + n] = static_cast<float>(acc);
    }
  }
}

#if defined(__AVX512F__)
namespace {

constexpr int kRowBlock = 4;    // weight rows per tile
constexpr int kTokenBlock = 4;  // activation rows per tile
constexpr int64_t kTokenChunk = 96;  // activation rows kept hot in L2 while weights stream

// Accumulates a RM×RN tile of y over all of K (K % 32 == 0).
template <int RM, int RN>
inline void Tile(const float* xp, int64_t K, const uint16_t* w, float* y, int64_t ldy) {
  __m512 acc[RM][RN];
  for (int m = 0; m < RM; ++m)
    for (int r = 0; r < RN; ++r) acc[m][r] = _mm512_setzero_ps();
  const __m512i high_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t k = 0; k < K; k += 32) {
    __m512 lo[RN], hi[RN];
    for (int r = 0; r < RN; ++r) {
      __m512i raw = _mm512_loadu_si512(w + r * K + k);
      lo[r] = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
      hi[r] = _mm512_castsi512_ps(_mm512_and_si512(raw, high_mask));
    }
    for (int m = 0; m < RM; ++m) {
      __m512 xe = _mm512_loadu_ps(xp + m * K + k);
      __m512 xo = _mm512_loadu_ps(xp + m * K + k + 16);
      for (int r = 0; r < RN; ++r) {
        acc[m][r] = _mm512_fmadd_ps(xe, lo[r], acc[m][r]);
        acc[m][r] = _mm512_fmadd_ps(xo, hi[r], acc[m][r]);
      }
    }
  }
  for (int m = 0; m < RM; ++m)
    for (int r = 0; r < RN; ++r) y[m * ldy + r] = _mm512_reduce_add_ps(acc[m][r]);
}

template <int RN>
inline void TileRows(const float* xp, int64_t rm, int64_t K, const uint16_t* w, float* y, int64_t ldy) {
  switch (rm) {
    case 4: Tile<4, RN>(xp, K, w, y, ldy); break;
    case 3: Tile<3, RN>(xp, K, w, y, ldy); break;
    case 2: Tile<2, RN>(xp, K, w, y, ldy); break;
    default: Tile<1, RN>(xp, K, w, y, ldy); break;
  }
}

void PermuteActivations(const float* x, int64_t m, int64_t K, float* xp) {
  for (int64_t i = 0; i < m; ++i) {
    const float* src = x + i * K;
    float* dst = xp + i * K;
    for (int64_t k = 0; k < K; k += 32) {
      for (int j = 0; j < 16; ++j) {
        dst[k + j] = src[k + 2 * j];
        dst[k + 16 + j] = src[k + 2 * j + 1];
      }
    }
  }
}

void LinearBf16(const float* x, int64_t m, const WeightView& w, float* y) {
  const int64_t K = w.cols, N = w.rows;
  thread_local std::vector<float> permuted;
  permuted.resize(static_cast<size_t>(m * K));
  PermuteActivations(x, m, K, permuted.data());
  const float* xp = permuted.data();
  const auto* wd = static_cast<const uint16_t*>(w.data);
  const int64_t row_blocks = (N + kRowBlock - 1) / kRowBlock;
#pragma omp parallel
  {
    // Static split of weight rows: each thread streams its own contiguous share once per chunk.
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t b0 = row_blocks * t / threads, b1 = row_blocks * (t + 1) / threads;
    for (int64_t m0 = 0; m0 < m; m0 += kTokenChunk) {
      const int64_t m1 = std::min(m, m0 + kTokenChunk);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n = b * kRowBlock;
        const int64_t rn = std::min<int64_t>(kRowBlock, N - n);
        for (int64_t i = m0; i < m1; i += kTokenBlock) {
          const int64_t rm = std::min<int64_t>(kTokenBlock, m1 - i);
          if (rn == kRowBlock) {
            TileRows<kRowBlock>(xp + i * K, rm, K, wd + n * K, y + i * N + n, N);
          } else {
            for (int64_t r = 0; r < rn; ++r) TileRows<1>(xp + i * K, rm, K, wd + (n + r) * K, y + i * N + n + r, N);
          }
        }
      }
    }
  }
}

}  // namespace
#endif

void Linear(const float* x, int64_t m, const WeightView& w, float* y) {
  if (m == 0 || w.rows == 0) return;
  if (w.dtype == DType::kF32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(w.rows),
                static_cast<int>(w.cols), 1.0f, x, static_cast<int>(w.cols), static_cast<const float*>(w.data),
                static_cast<int>(w.cols), 0.0f, y, static_cast<int>(w.rows));
    return;
  }
#if defined(__AVX512F__)
  if (w.cols % 32 == 0) {
    LinearBf16(x, m, w, y);
    return;
  }
#endif
  // Portable path: widen one weight row at a time and accumulate in float.
  const auto* wd = static_cast<const uint16_t*>(w.data);
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(w.cols));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < w.rows; ++n) {
      Bf16ToF32(wd + n * w.cols, row.data(), static_cast<size_t>(w.cols));
      for (int64_t i = 0; i < m; ++i) {
        const float* xi = x + i * w.cols;
        float acc = 0;
        for (int64_t k = 0; k < w.cols; ++k) acc += xi[k] * row[k];
        y[i * w.rows + n] = acc;
      }
    }
  }
}

}  // namespace daedalus
