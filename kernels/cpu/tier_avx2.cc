// The avx2 tier (AVX2 + FMA, e.g. many AMD EPYC): bf16 and fp8 weights widened to float,
// 8-wide FMA with float accumulation, outer-product form as the avx512 tier.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "kernels/cpu/tier.h"
#include "kernels/panel_layout.h"

#pragma GCC target("avx2,fma,bmi2")

namespace daedalus::cpu {
namespace {

constexpr int kMaxMr = 5;  // 10 accumulators over half a panel, with its weights, in the 16 registers
constexpr int64_t kPrefetchPairs = 8;

// Lane masks for `valid` columns of each 8-row group g of the panel's 32.
__m256i GroupMask(int valid, int g) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(valid - 8 * g), lane);
}

// The MR × 32 tile in one pass over the inputs, as 4 groups of 8 rows (group g's weights of a
// pair come from the 32 bytes at lanes (g % 2)·8 of half g / 2), its 4·MR accumulators in
// registers: for one or two tokens, whose products stream their weights from memory once.
template <int MR, typename Widen>
void OnePass(const PanelCall& c, Widen widen) {
  __m256i mask[4];
  for (int g = 0; g < 4; ++g) mask[g] = GroupMask(c.valid, g);
  __m256 acc[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int g = 0; g < 4; ++g) acc[m][g] = c.accumulate ? _mm256_maskload_ps(c.y[m] + 8 * g, mask[g]) : _mm256_setzero_ps();
  const auto* x = static_cast<const float*>(c.x);
  for (int64_t kp = 0; kp < c.kn / 2; ++kp) {
    const float* xk = x + 2 * kp * MR;
    widen.Prefetch(kp + kPrefetchPairs, 0);
    for (int g = 0; g < 4; ++g) {
      __m256 w0, w1;  // rows 8g..8g+7 at inputs 2kp and 2kp + 1
      widen(kp, g, w0, w1);
      for (int m = 0; m < MR; ++m) acc[m][g] = _mm256_fmadd_ps(_mm256_broadcast_ss(xk + m), w0, acc[m][g]);
      for (int m = 0; m < MR; ++m) acc[m][g] = _mm256_fmadd_ps(_mm256_broadcast_ss(xk + MR + m), w1, acc[m][g]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int g = 0; g < 4; ++g) _mm256_maskstore_ps(c.y[m] + 8 * g, mask[g], acc[m][g]);
}

// Three to five tokens: two passes over the inputs, rows 0-15 and then 16-31. Each pass's 2·MR
// accumulators, its two groups' widened weights and a broadcast input fit the 16 registers,
// where one pass of three tokens spilled accumulators to the stack at every pair (prefill at
// 50% of the FMA peak, now 66%). Each output is the same chain either way: inputs 2kp then
// 2kp + 1, pair after pair.
template <int MR, typename Widen>
void TwoPasses(const PanelCall& c, Widen widen) {
  const auto* x = static_cast<const float*>(c.x);
  for (int half = 0; half < 2 && 16 * half < c.valid; ++half) {
    __m256i mask[2];
    __m256 acc[MR][2];
    for (int g = 0; g < 2; ++g) {
      mask[g] = GroupMask(c.valid, 2 * half + g);
      for (int m = 0; m < MR; ++m)
        acc[m][g] = c.accumulate ? _mm256_maskload_ps(c.y[m] + 16 * half + 8 * g, mask[g]) : _mm256_setzero_ps();
    }
    for (int64_t kp = 0; kp < c.kn / 2; ++kp) {
      const float* xk = x + 2 * kp * MR;
      widen.Prefetch(kp + kPrefetchPairs, half);
      __m256 w0[2], w1[2];  // rows of the two groups at inputs 2kp and 2kp + 1
      for (int g = 0; g < 2; ++g) widen(kp, 2 * half + g, w0[g], w1[g]);
      for (int m = 0; m < MR; ++m) {
        const __m256 x0 = _mm256_broadcast_ss(xk + m);
        for (int g = 0; g < 2; ++g) acc[m][g] = _mm256_fmadd_ps(x0, w0[g], acc[m][g]);
        const __m256 x1 = _mm256_broadcast_ss(xk + MR + m);
        for (int g = 0; g < 2; ++g) acc[m][g] = _mm256_fmadd_ps(x1, w1[g], acc[m][g]);
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int g = 0; g < 2; ++g) _mm256_maskstore_ps(c.y[m] + 16 * half + 8 * g, mask[g], acc[m][g]);
  }
}

template <int MR, typename Widen>
void Panel(const PanelCall& c, Widen widen) {
  if constexpr (MR <= 2) OnePass<MR>(c, widen);
  else TwoPasses<MR>(c, widen);
}

struct WidenBf16 {
  const uint16_t* panel;
  // The first pass brings the whole pair from memory; a second its own half, from L2.
  void Prefetch(int64_t kp, int half) const {
    if (half == 0) _mm_prefetch(reinterpret_cast<const char*>(panel + kp * kPanelPair), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(panel + kp * kPanelPair + 32), _MM_HINT_T0);
  }
  __attribute__((always_inline)) void operator()(int64_t kp, int g, __m256& w0, __m256& w1) const {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + kp * kPanelPair + g * 16));
    w0 = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
    w1 = _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
};

// As the avx512 tier: code j of the pair to bits 24-31, arithmetic shift by 4, masked: the
// value times 2^-120; the scale carries 2^120.
struct WidenFp8 {
  const uint8_t* panel;
  const float* scales;
  int64_t k0;
  void Prefetch(int64_t kp, int) const { _mm_prefetch(reinterpret_cast<const char*>(panel + kp * kPanelPair), _MM_HINT_T0); }
  __attribute__((always_inline)) void operator()(int64_t kp, int g, __m256& w0, __m256& w1) const {
    const __m256i v = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(panel + kp * kPanelPair + g * 16)));
    const __m256i keep = _mm256_set1_epi32(static_cast<int>(0x87f00000u));
    const __m256 scale = _mm256_set1_ps(scales[(k0 + 2 * kp) / 128] * 0x1p120f);
    w0 = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(_mm256_slli_epi32(v, 24), 4), keep)), scale);
    w1 = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(_mm256_slli_epi32(v, 16), 4), keep)), scale);
  }
};

template <int MR>
void Bf16Panel(const PanelCall& c) {
  Panel<MR>(c, WidenBf16{static_cast<const uint16_t*>(c.panel)});
}
template <int MR>
void Fp8Panel(const PanelCall& c) {
  Panel<MR>(c, WidenFp8{static_cast<const uint8_t*>(c.panel), c.scales, c.k0});
}

void PanelBf16(const PanelCall& c) {
  static constexpr void (*table[])(const PanelCall&) = {&Bf16Panel<1>, &Bf16Panel<2>, &Bf16Panel<3>, &Bf16Panel<4>, &Bf16Panel<5>};
  table[c.mr - 1](c);
}
void PanelFp8(const PanelCall& c) {
  static constexpr void (*table[])(const PanelCall&) = {&Fp8Panel<1>, &Fp8Panel<2>, &Fp8Panel<3>, &Fp8Panel<4>, &Fp8Panel<5>};
  table[c.mr - 1](c);
}

// e^x for 8 floats, as the AVX-512 version, with 2^n built in the exponent field.
__m256 Exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  for (float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  // n in [-126, 127]: 2^n is a normal float. Two halves keep 2^n finite when p · 2^n is not.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(ni, 1);
  const __m256 a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
  const __m256 b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, a), b);
}

void Exp(float* v, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, Exp8(_mm256_loadu_ps(v + i)));
  if (i < n) {
    float tail[8] = {};
    std::copy(v + i, v + n, tail);
    _mm256_storeu_ps(tail, Exp8(_mm256_loadu_ps(tail)));
    std::copy(tail, tail + (n - i), v + i);
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) {
    float e = -gate[i];
    Exp(&e, 1);
    out[i] = gate[i] / (1.0f + e) * up[i];
  }
}

// Four 8-wide accumulators over blocks of 32, the tail masked into the first ones.
float Dot(const float* a, const float* b, int64_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int j = 0; j < 4; ++j) acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * j), _mm256_loadu_ps(b + i + 8 * j), acc[j]);
  for (int j = 0; i < n; i += 8, ++j) {
    const __m256i mask = GroupMask(static_cast<int>(std::min<int64_t>(n - i, 8)), 0);
    acc[j] = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, mask), _mm256_maskload_ps(b + i, mask), acc[j]);
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] = std::fma(alpha, x[i], y[i]);
}

void DotRows(const float* q, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* out) {
  for (int64_t j = 0; j < n_rows; ++j) out[j] = Dot(q, rows + j * stride, dim);
}

// y in registers, 16 floats at a time for each of kH outputs, across all rows (each row's 16
// floats loaded once for all kH): per element the same multiply-add, in the same order, as Axpy.
template <int kH>
void AxpyRowsHeads(const float* w, int64_t w_stride, const float* rows, int64_t stride, int64_t n_rows, int64_t dim,
                   float* y, int64_t y_stride) {
  for (int64_t i0 = 0; i0 < dim; i0 += 16) {
    __m256i mask[2];
    __m256 acc[kH][2];
    for (int c = 0; c < 2; ++c) {
      mask[c] = GroupMask(static_cast<int>(std::min<int64_t>(dim - i0, 16)), c);
      for (int h = 0; h < kH; ++h) acc[h][c] = _mm256_maskload_ps(y + h * y_stride + i0 + 8 * c, mask[c]);
    }
    for (int64_t j = 0; j < n_rows; ++j) {
      const float* r = rows + j * stride + i0;
      const __m256 r0 = _mm256_maskload_ps(r, mask[0]), r1 = _mm256_maskload_ps(r + 8, mask[1]);
      for (int h = 0; h < kH; ++h) {
        const __m256 a = _mm256_broadcast_ss(w + h * w_stride + j);
        acc[h][0] = _mm256_fmadd_ps(a, r0, acc[h][0]);
        acc[h][1] = _mm256_fmadd_ps(a, r1, acc[h][1]);
      }
    }
    for (int c = 0; c < 2; ++c)
      for (int h = 0; h < kH; ++h) _mm256_maskstore_ps(y + h * y_stride + i0 + 8 * c, mask[c], acc[h][c]);
  }
}

void AxpyRows(const float* w, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* y) {
  AxpyRowsHeads<1>(w, 0, rows, stride, n_rows, dim, y, 0);
}

// Four heads at a time: 8 accumulators, two row loads for 8 multiply-adds.
void AxpyRowsMany(const float* w, int64_t w_stride, int64_t heads, const float* rows, int64_t stride, int64_t n_rows,
                  int64_t dim, float* y, int64_t y_stride) {
  int64_t h = 0;
  for (; h + 4 <= heads; h += 4)
    AxpyRowsHeads<4>(w + h * w_stride, w_stride, rows, stride, n_rows, dim, y + h * y_stride, y_stride);
  for (; h < heads; ++h) AxpyRowsHeads<1>(w + h * w_stride, w_stride, rows, stride, n_rows, dim, y + h * y_stride, y_stride);
}

// Two 8-lane halves of up to two 16-key blocks at a time: four independent chains over d.
void DotKeys16(const float* q, const float* keys16, int64_t n, int64_t dim, float* out) {
  const int64_t blocks = (n + 15) / 16;
  for (int64_t b0 = 0; b0 < blocks; b0 += 2) {
    const int nb = static_cast<int>(std::min<int64_t>(2, blocks - b0));
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t d = 0; d < dim; ++d) {
      const __m256 qd = _mm256_broadcast_ss(q + d);
      for (int i = 0; i < nb; ++i) {
        const float* k = keys16 + ((b0 + i) * dim + d) * 16;
        acc[2 * i] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k), acc[2 * i]);
        acc[2 * i + 1] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + 8), acc[2 * i + 1]);
      }
    }
    alignas(32) float lanes[32];
    for (int i = 0; i < 2 * nb; ++i) _mm256_store_ps(lanes + 8 * i, acc[i]);
    const int64_t j0 = b0 * 16, count = std::min<int64_t>(16 * nb, n - j0);
    std::copy(lanes, lanes + count, out + j0);
  }
}

// Four queries by one 16-key block (its two 8-lane halves): 8 accumulators, the block's two
// loads and four broadcasts for 8 multiply-adds, each (query, key) chain over d in order as in
// DotKeys16.
void DotKeys16Many(const float* q, int64_t q_stride, int64_t queries, const float* keys16, int64_t n, int64_t dim,
                   float* out, int64_t out_stride) {
  int64_t i = 0;
  for (; i + 4 <= queries; i += 4) {
    const float* qi = q + i * q_stride;
    float* oi = out + i * out_stride;
    for (int64_t b = 0; b < (n + 15) / 16; ++b) {
      __m256 acc[4][2];
      for (auto& a : acc) a[0] = a[1] = _mm256_setzero_ps();
      const float* k = keys16 + b * dim * 16;
      for (int64_t d = 0; d < dim; ++d) {
        const __m256 k0 = _mm256_loadu_ps(k + d * 16), k1 = _mm256_loadu_ps(k + d * 16 + 8);
        for (int u = 0; u < 4; ++u) {
          const __m256 qd = _mm256_broadcast_ss(qi + u * q_stride + d);
          acc[u][0] = _mm256_fmadd_ps(qd, k0, acc[u][0]);
          acc[u][1] = _mm256_fmadd_ps(qd, k1, acc[u][1]);
        }
      }
      const int64_t j0 = b * 16, count = std::min<int64_t>(16, n - j0);
      for (int u = 0; u < 4; ++u) {
        alignas(32) float lanes[16];
        _mm256_store_ps(lanes, acc[u][0]);
        _mm256_store_ps(lanes + 8, acc[u][1]);
        std::copy(lanes, lanes + count, oi + u * out_stride + j0);
      }
    }
  }
  for (; i < queries; ++i) DotKeys16(q + i * q_stride, keys16, n, dim, out + i * out_stride);
}

// e4m3 to float without a table: the code's magnitude bits moved to a float's exponent and
// mantissa fields (subnormal codes become float subnormals) times 2^120 restores the bias,
// exactly; then the scale, the one rounding.
void Fp8ToF32(const uint8_t* codes, int64_t n, float scale, float* out) {
  const __m256i mag = _mm256_set1_epi32(0x7f), sign = _mm256_set1_epi32(0x80);
  const __m256 bias = _mm256_set1_ps(0x1p120f), s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i)));
    const __m256i bits = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(c, mag), 20),
                                         _mm256_slli_epi32(_mm256_and_si256(c, sign), 24));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_castsi256_ps(bits), bias), s));
  }
  if (i < n) GenericKernels().fp8_to_f32(codes + i, n - i, scale, out + i);  // the same formula, scalar
}

void Bf16ToF32(const uint16_t* in, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i)));
    _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  if (i < n) GenericKernels().bf16_to_f32(in + i, n - i, out + i);
}

double FmaProbe(int64_t iters) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(0.001f * i);
  const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.0001f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 12; ++j) a[j] = _mm256_fmadd_ps(a[j], b, c);
  __m256 sum = a[0];
  for (int j = 1; j < 12; ++j) sum = _mm256_add_ps(sum, a[j]);
  float lanes[8];
  _mm256_storeu_ps(lanes, sum);
  volatile float sink = lanes[0] + lanes[7];
  (void)sink;
  return static_cast<double>(iters) * 12 * 8 * 2;
}

float ReadProbe(const float* v, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(v + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(v + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(v + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(v + i + 24));
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  float total = 0;
  for (float l : lanes) total += l;
  return total;
}

}  // namespace

const TierKernels& Avx2Kernels() {
  static const TierKernels k{CpuIsa::kAvx2, false, nullptr, kMaxMr, PanelBf16, PanelFp8, nullptr, nullptr, Exp, nullptr, SiluMul, Dot, Axpy, DotRows, AxpyRows, nullptr, AxpyRowsMany, DotKeys16, DotKeys16Many, Fp8ToF32, Bf16ToF32, FmaProbe, FmaProbe, ReadProbe, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  return k;
}

}  // namespace daedalus::cpu
