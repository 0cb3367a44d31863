// GCC 12 warns falsely inside its own AVX-512 min/max intrinsics (an undefined pass-through
// operand the unmasked form never reads).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"

namespace daedalus {

void RmsNorm(const float* x, const float* gamma, int64_t rows, int64_t n, float eps, float* y, int64_t x_stride,
             int64_t y_stride) {
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

static inline float Silu(float v) { return v / (1.0f + std::exp(-v)); }

#if defined(__AVX512F__)
// e^x for 16 floats: n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite, so r keeps
// its precision for large |x|), e^r by its degree-7 Taylor polynomial on |r| <= ln 2 / 2, then
// scaled by 2^n. Relative error below 2.5e-7 (the test checks it against std::exp). Inputs are
// clamped to [-87, 88], where float e^x neither overflows nor goes subnormal.
static inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2, high part (exact product)
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);      // ln 2, low part
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  for (float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}
#endif

void ExpInPlace(float* v, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(v + i, Exp(_mm512_loadu_ps(v + i)));
#endif
  for (; i < n; ++i) v[i] = std::exp(v[i]);
}

void SiluMulSeparate(const float* gate, const float* up, int64_t rows, int64_t width, float* out) {
  const int64_t n = rows * width;
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 e = Exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(up + i)));
  }
#endif
  for (; i < n; ++i) out[i] = Silu(gate[i]) * up[i];
}

void RotateInterleaved(float* v, int64_t dim, const float* cos, const float* sin) {
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = a * cos[i] - b * sin[i];
    v[2 * i + 1] = a * sin[i] + b * cos[i];
  }
}

void Softmax(float* v, int64_t n) {
  float max = -INFINITY;
  for (int64_t i = 0; i < n; ++i) max = std::max(max, v[i]);
  for (int64_t i = 0; i < n; ++i) v[i] -= max;
  ExpInPlace(v, n);
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += v[i];
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) v[i] *= inv;
}

float Dot(const float* a, const float* b, int64_t n) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void Axpy(float a, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace daedalus
