#include <algorithm>
#include <cmath>
#include <limits>

#include "core/dtype.h"
#include "core/status.h"
#include "kernels/cpu/tier.h"
#include "kernels/ops.h"

namespace daedalus {

void RmsNorm(const float* x, const float* gamma, int64_t rows, int64_t n, float eps, float* y, int64_t x_stride,
             int64_t y_stride) {
#pragma omp parallel for schedule(static) if (rows * n >= kShareOverThreads)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * x_stride;
    float* yr = y + r * y_stride;
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * inv * gamma[i];
  }
}

void ExpInPlace(float* v, int64_t n) { cpu::Kernels().exp(v, n); }

float ScaleScores(float* v, int64_t n, float scale) {
  if (const auto tier = cpu::Kernels().scale_scores) return tier(v, n, scale);
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) v[j] *= scale;
#pragma omp simd reduction(max : max)
  for (int64_t j = 0; j < n; ++j) max = std::max(max, v[j]);
  return max;
}

float ExpScores(float* v, int64_t n, float shift, bool bf16) {
  if (const auto tier = cpu::Kernels().exp_scores) return tier(v, n, shift, bf16);
  for (int64_t j = 0; j < n; ++j) v[j] -= shift;
  cpu::Kernels().exp(v, n);
  if (bf16)
    for (int64_t j = 0; j < n; ++j) v[j] = Bf16ToF32(F32ToBf16(v[j]));
  float lanes[16] = {};
  for (int64_t j0 = 0; j0 < n; j0 += 16)
    for (int64_t l = 0; l < 16 && j0 + l < n; ++l) lanes[l] += v[j0 + l];
  for (int64_t width = 8; width >= 1; width /= 2)
    for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

void RoundBf16(const float* in, int64_t n, uint16_t* out) {
  if (const auto tier = cpu::Kernels().round_bf16) return tier(in, n, out);
  F32ToBf16(in, out, static_cast<size_t>(n));
}

// Elementwise, so any split gives the same bits; prefill-sized inputs are shared over the threads
// (inside a parallel region this runs on the calling thread). Smaller ones open no parallel
// region at all: one with a single thread still costs about a microsecond.
void SiluMulSeparate(const float* gate, const float* up, int64_t rows, int64_t width, float* out) {
  constexpr int64_t kChunk = 16384;
  const int64_t n = rows * width;
  const auto silu_mul = cpu::Kernels().silu_mul;
  if (n < 4 * kChunk) return silu_mul(gate, up, n, out);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += kChunk) silu_mul(gate + i, up + i, std::min(kChunk, n - i), out + i);
}

void RotateInterleaved(float* v, int64_t dim, const float* cos, const float* sin) {
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = a * cos[i] - b * sin[i];
    v[2 * i + 1] = a * sin[i] + b * cos[i];
  }
}

void Softmax(float* v, int64_t n) {
  if (const auto softmax = cpu::Kernels().softmax; softmax != nullptr) return softmax(v, n);
  float max = -INFINITY;
  for (int64_t i = 0; i < n; ++i) max = std::max(max, v[i]);
  for (int64_t i = 0; i < n; ++i) v[i] -= max;
  ExpInPlace(v, n);
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += v[i];
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) v[i] *= inv;
}

float Dot(const float* a, const float* b, int64_t n) { return cpu::Kernels().dot(a, b, n); }

void Axpy(float a, const float* x, float* y, int64_t n) { cpu::Kernels().axpy(a, x, y, n); }

void DotRows(const float* q, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* out) {
  cpu::Kernels().dot_rows(q, rows, stride, n_rows, dim, out);
}

void AxpyRows(const float* w, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* y) {
  cpu::Kernels().axpy_rows(w, rows, stride, n_rows, dim, y);
}

void DotRowsMany(const float* q, int64_t q_stride, int64_t heads, const float* rows, int64_t stride, int64_t n_rows,
                 int64_t dim, float* out, int64_t out_stride) {
  const cpu::TierKernels& k = cpu::Kernels();
  if (k.dot_rows_many != nullptr) return k.dot_rows_many(q, q_stride, heads, rows, stride, n_rows, dim, out, out_stride);
  for (int64_t h = 0; h < heads; ++h) k.dot_rows(q + h * q_stride, rows, stride, n_rows, dim, out + h * out_stride);
}

void AxpyRowsMany(const float* w, int64_t w_stride, int64_t heads, const float* rows, int64_t stride, int64_t n_rows,
                  int64_t dim, float* y, int64_t y_stride) {
  const cpu::TierKernels& k = cpu::Kernels();
  if (k.axpy_rows_many != nullptr) return k.axpy_rows_many(w, w_stride, heads, rows, stride, n_rows, dim, y, y_stride);
  for (int64_t h = 0; h < heads; ++h) k.axpy_rows(w + h * w_stride, rows, stride, n_rows, dim, y + h * y_stride);
}

bool HasBf16Attention() { return cpu::Kernels().dot_rows_bf16 != nullptr; }

void DotRowsBf16Many(const uint16_t* q, int64_t q_stride, int64_t heads, const uint16_t* rows, int64_t stride,
                     int64_t n_rows, int64_t dim, float* out, int64_t out_stride) {
  DAEDALUS_CHECK(HasBf16Attention());
  cpu::Kernels().dot_rows_bf16(q, q_stride, heads, rows, stride, n_rows, dim, out, out_stride);
}

void DotRowsBf16Transposed(const uint16_t* q, int64_t q_stride, int64_t heads, const uint16_t* rows, int64_t stride,
                           int64_t n_rows, int64_t dim, float* out, int64_t out_stride) {
  DAEDALUS_CHECK(HasBf16Attention());
  cpu::Kernels().dot_rows_bf16_transposed(q, q_stride, heads, rows, stride, n_rows, dim, out, out_stride);
}

void AxpyRowsBf16Many(const float* w, int64_t w_stride, int64_t heads, const uint16_t* rows, int64_t stride,
                      int64_t n_rows, int64_t dim, float* y, int64_t y_stride) {
  DAEDALUS_CHECK(HasBf16Attention());
  cpu::Kernels().axpy_rows_bf16(w, w_stride, heads, rows, stride, n_rows, dim, y, y_stride);
}

void PackKeys16(const float* rows, int64_t stride, int64_t n, int64_t dim, float* out) {
  for (int64_t b = 0; b < (n + 15) / 16; ++b)
    for (int64_t d = 0; d < dim; ++d)
      for (int64_t l = 0; l < 16; ++l) {
        const int64_t j = b * 16 + l;
        out[(b * dim + d) * 16 + l] = j < n ? rows[j * stride + d] : 0.0f;
      }
}

void DotKeys16(const float* q, const float* keys16, int64_t n, int64_t dim, float* out) {
  cpu::Kernels().dot_keys16(q, keys16, n, dim, out);
}

void DotKeys16Many(const float* q, int64_t q_stride, int64_t queries, const float* keys16, int64_t n, int64_t dim,
                   float* out, int64_t out_stride) {
  const cpu::TierKernels& k = cpu::Kernels();
  if (k.dot_keys16_many != nullptr) return k.dot_keys16_many(q, q_stride, queries, keys16, n, dim, out, out_stride);
  for (int64_t i = 0; i < queries; ++i) k.dot_keys16(q + i * q_stride, keys16, n, dim, out + i * out_stride);
}

int64_t ManyQueries() { return cpu::Kernels().many_queries; }
int64_t AxpyRowsColumns() { return cpu::Kernels().axpy_columns; }

void Fp8ToF32(const uint8_t* codes, int64_t n, float scale, float* out) { cpu::Kernels().fp8_to_f32(codes, n, scale, out); }
void WidenBf16(const uint16_t* in, int64_t n, float* out) { cpu::Kernels().bf16_to_f32(in, n, out); }

}  // namespace daedalus
