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
// After the target pragma, so that its callers' kernels inline into it (it holds no library code).
#include "kernels/cpu/count_dispatch.h"

namespace daedalus::cpu {
namespace {

constexpr int kMaxMr = 5;  // 10 accumulators over half a panel, with its weights, in the 16 registers

// Lane masks for `valid` columns of each 8-row group g of the panel's 32.
__m256i GroupMask(int valid, int g) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(valid - 8 * g), lane);
}

// Masked loads and stores (VMASKMOVPS) only where a vector runs past the end: on AMD's cores the
// masked store is many times slower than a plain one (attention's sums ran at a third of the FMA
// peak with every store masked). Load8 and Store8 where the caller knows at compile time whether
// the vector is whole; LoadGroup and StoreGroup for group g of `valid` floats, decided at run time.
template <bool kWhole>
__attribute__((always_inline)) inline __m256 Load8(const float* p, __m256i mask) {
  return kWhole ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask);
}
template <bool kWhole>
__attribute__((always_inline)) inline void Store8(float* p, __m256i mask, __m256 v) {
  if (kWhole) _mm256_storeu_ps(p, v);
  else _mm256_maskstore_ps(p, mask, v);
}
inline __m256 LoadGroup(const float* y, int valid, int g) {
  return 8 * (g + 1) <= valid ? _mm256_loadu_ps(y) : _mm256_maskload_ps(y, GroupMask(valid, g));
}
inline void StoreGroup(float* y, int valid, int g, __m256 v) {
  if (8 * (g + 1) <= valid) _mm256_storeu_ps(y, v);
  else _mm256_maskstore_ps(y, GroupMask(valid, g), v);
}

// PanelCall::ahead's lines, spread evenly over `pairs` steps.
struct Ahead {
  const char* p;
  int64_t lines, pairs, acc = 0;
  Ahead(const PanelCall& c, int64_t pairs) : p(c.ahead), lines(c.ahead ? (c.ahead_bytes + 63) / 64 : 0), pairs(pairs) {}
  __attribute__((always_inline)) void Step() {
    for (acc += lines; acc >= pairs && lines > 0; acc -= pairs, p += 64) _mm_prefetch(p, _MM_HINT_T1);
  }
};

// The MR × 32 tile in one pass over the inputs, as 4 vectors of 8 rows (two per half of the
// panel, in the order the Widen type gives them), its 4·MR accumulators in registers: for one or
// two tokens, whose products stream their weights from memory once. Named accumulators and each
// pair's inputs broadcast once: GCC kept an array of two tokens' accumulators on the stack,
// stored at every pair.
template <int MR, typename Widen>
void OnePass(const PanelCall& c, Widen widen) {
  static_assert(MR == 1 || MR == 2);
  const auto* x = static_cast<const float*>(c.x);
  float* const y0 = c.y[0];
  float* const y1 = c.y[MR - 1];
  auto init = [&](const float* y, int g) { return c.accumulate ? LoadGroup(y + 8 * g, c.valid, g) : _mm256_setzero_ps(); };
  // Token 0's accumulators a0-a3 (vectors 0-3), token 1's b0-b3.
  __m256 a0 = init(y0, 0), a1 = init(y0, 1), a2 = init(y0, 2), a3 = init(y0, 3);
  __m256 b0 = a0, b1 = a1, b2 = a2, b3 = a3;
  if constexpr (MR == 2) b0 = init(y1, 0), b1 = init(y1, 1), b2 = init(y1, 2), b3 = init(y1, 3);
  Ahead ahead(c, c.kn / 2);
  for (int64_t kp = 0; kp < c.kn / 2; ++kp) {
    const float* xk = x + 2 * kp * MR;
    widen.Prefetch(kp, 0);
    ahead.Step();
    const __m256 xa0 = _mm256_broadcast_ss(xk), xa1 = _mm256_broadcast_ss(xk + MR);  // token 0 at 2kp, 2kp + 1
    __m256 xb0 = xa0, xb1 = xa1;
    if constexpr (MR == 2) xb0 = _mm256_broadcast_ss(xk + 1), xb1 = _mm256_broadcast_ss(xk + 3);
    auto half = [&](int h, __m256& a, __m256& a_next, __m256& b, __m256& b_next) __attribute__((always_inline)) {
      __m256 w0[2], w1[2];  // the half's two vectors of rows at inputs 2kp and 2kp + 1
      widen(kp, h, w0, w1);
      a = _mm256_fmadd_ps(xa1, w1[0], _mm256_fmadd_ps(xa0, w0[0], a));
      a_next = _mm256_fmadd_ps(xa1, w1[1], _mm256_fmadd_ps(xa0, w0[1], a_next));
      if constexpr (MR == 2) {
        b = _mm256_fmadd_ps(xb1, w1[0], _mm256_fmadd_ps(xb0, w0[0], b));
        b_next = _mm256_fmadd_ps(xb1, w1[1], _mm256_fmadd_ps(xb0, w0[1], b_next));
      }
    };
    half(0, a0, a1, b0, b1), half(1, a2, a3, b2, b3);
  }
  StoreGroup(y0, c.valid, 0, a0), StoreGroup(y0 + 8, c.valid, 1, a1);
  StoreGroup(y0 + 16, c.valid, 2, a2), StoreGroup(y0 + 24, c.valid, 3, a3);
  if constexpr (MR == 2) {
    StoreGroup(y1, c.valid, 0, b0), StoreGroup(y1 + 8, c.valid, 1, b1);
    StoreGroup(y1 + 16, c.valid, 2, b2), StoreGroup(y1 + 24, c.valid, 3, b3);
  }
}

// Three to five tokens: two passes over the inputs, rows 0-15 and then 16-31. Each pass's 2·MR
// accumulators, its two groups' widened weights and a broadcast input fit the 16 registers,
// where one pass of three tokens spilled accumulators to the stack at every pair (prefill at
// 50% of the FMA peak, now 67-68%). Each output is the same chain either way: inputs 2kp then
// 2kp + 1, pair after pair.
template <int MR, typename Widen>
void TwoPasses(const PanelCall& c, Widen widen) {
  const auto* x = static_cast<const float*>(c.x);
  Ahead ahead(c, c.kn / 2);
  for (int half = 0; half < 2 && 16 * half < c.valid; ++half) {
    __m256 acc[MR][2];
    for (int g = 0; g < 2; ++g)
      for (int m = 0; m < MR; ++m)
        acc[m][g] = c.accumulate ? LoadGroup(c.y[m] + 16 * half + 8 * g, c.valid, 2 * half + g) : _mm256_setzero_ps();
    for (int64_t kp = 0; kp < c.kn / 2; ++kp) {
      const float* xk = x + 2 * kp * MR;
      widen.Prefetch(kp, half);
      if (half == 0) ahead.Step();
      __m256 w0[2], w1[2];  // the half's two vectors of rows at inputs 2kp and 2kp + 1
      widen(kp, half, w0, w1);
      for (int m = 0; m < MR; ++m) {
        const __m256 x0 = _mm256_broadcast_ss(xk + m);
        for (int g = 0; g < 2; ++g) acc[m][g] = _mm256_fmadd_ps(x0, w0[g], acc[m][g]);
        const __m256 x1 = _mm256_broadcast_ss(xk + MR + m);
        for (int g = 0; g < 2; ++g) acc[m][g] = _mm256_fmadd_ps(x1, w1[g], acc[m][g]);
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int g = 0; g < 2; ++g) StoreGroup(c.y[m] + 16 * half + 8 * g, c.valid, 2 * half + g, acc[m][g]);
  }
}

template <int MR, typename Widen>
void Panel(const PanelCall& c, Widen widen) {
  if constexpr (MR <= 2) OnePass<MR>(c, widen);
  else TwoPasses<MR>(c, widen);
}

// A Widen type gives the 16 rows of panel half h at one input pair as two vectors of 8 rows
// for each input (w0 at 2kp, w1 at 2kp + 1).
//
// bf16: rows in order, the half's first 8 rows in vector 0: one shift (2kp) and one mask
// (2kp + 1) per 8 rows.
struct WidenBf16 {
  const uint16_t* panel;
  static constexpr int64_t kAhead = 8;  // pairs prefetched ahead (1 KB)
  // At pair kp, pair kp + kAhead: the first pass brings the whole pair from memory; a second its
  // own half, from L2.
  __attribute__((always_inline)) void Prefetch(int64_t kp, int half) const {
    if (half == 0) _mm_prefetch(reinterpret_cast<const char*>(panel + (kp + kAhead) * kPanelPair), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(panel + (kp + kAhead) * kPanelPair + 32), _MM_HINT_T0);
  }
  __attribute__((always_inline)) void operator()(int64_t kp, int h, __m256 (&w0)[2], __m256 (&w1)[2]) const {
    for (int g = 0; g < 2; ++g) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + kp * kPanelPair + (2 * h + g) * 16));
      w0[g] = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
      w1[g] = _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
    }
  }
};

// fp8: each code moved to bits 20-26 with its sign in bit 31, the code's value times 2^-120 as a
// float (subnormal codes become float subnormals), exactly. The half's 32 codes in one vector,
// each 32-bit lane holding rows 2i (bytes 0-1: inputs 2kp, 2kp + 1) and 2i + 1 (bytes 2-3), so
// vector 0 holds the half's even rows (0, 2, .., 14) and vector 1 its odd rows: FP8 sums come out
// in that order, which Fp8Panel puts back. Two codes at once in 16-bit lanes: an arithmetic
// shift by 4 puts bytes 1 and 3 in place within their halves of the lane; one mask (sign and bits
// 20-26) then keeps the high half's code, and the low half's after a shift up by 16; bytes 0 and
// 2 the same after a shift up by 8. Nine operations per 32 codes, five of them shifts, where
// widening 16-bit pairs to 32-bit lanes took twelve, eight on the shift units. One mask constant
// where there were two (each half's code, then the high half): one register more for the kernels.
//
// Both Prefetch functions are forced inline: without it GCC emitted no prefetch at all in the
// FP8 kernels (the call to a function with no result was dropped).
struct WidenFp8 {
  const uint8_t* panel;
  // Pairs prefetched ahead (2 KB). A one-token product streamed, beside the read probe in one
  // process (medians of 61 alternating runs): 4 pairs ahead 0.77-0.80 of the probe, 8 pairs
  // 0.80-0.83, 16 pairs 0.84-0.88, 32 pairs 0.86-0.91, 64 and 128 as 32, 256 0.85; bf16's best
  // stays at 8 pairs.
  static constexpr int64_t kAhead = 32;
  __attribute__((always_inline)) void Prefetch(int64_t kp, int half) const {  // the whole pair (one line) in the first pass
    if (half == 0) _mm_prefetch(reinterpret_cast<const char*>(panel + (kp + kAhead) * kPanelPair), _MM_HINT_T0);
  }
  __attribute__((always_inline)) void operator()(int64_t kp, int h, __m256 (&w0)[2], __m256 (&w1)[2]) const {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + kp * kPanelPair + h * 32));
    const __m256i code = _mm256_set1_epi32(static_cast<int>(0x87f00000u));  // sign and bits 20-26
    const __m256i odd = _mm256_srai_epi16(v, 4);                          // bytes 1, 3 in place in each half
    const __m256i even = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 4);  // bytes 0, 2
    w0[0] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(even, 16), code));
    w1[0] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(odd, 16), code));
    w0[1] = _mm256_castsi256_ps(_mm256_and_si256(even, code));
    w1[1] = _mm256_castsi256_ps(_mm256_and_si256(odd, code));
  }
};

template <int MR>
void Bf16Panel(const PanelCall& c) {
  Panel<MR>(c, WidenBf16{static_cast<const uint16_t*>(c.panel)});
}
// Rows 0-7 and 8-15 of a half from its even rows (0, 2, .., 14) and odd rows.
__attribute__((always_inline)) inline void RowsInOrder(__m256 even, __m256 odd, __m256& first, __m256& second) {
  const __m256 lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);  // rows 0-3 | 8-11, 4-7 | 12-15
  first = _mm256_permute2f128_ps(lo, hi, 0x20);
  second = _mm256_permute2f128_ps(lo, hi, 0x31);
}

// Columns [16h, 16h + 16) of a panel's output row y, its first `valid` columns only: y = sum ·
// scale (+ y where `add`), for one scale block's unscaled sums of panel half h, its even and
// odd rows (WidenFp8's order).
__attribute__((always_inline)) inline void ScaleHalfInto(__m256 even, __m256 odd, __m256 scale, bool add, int h, float* y,
                                                         int valid) {
  __m256 sum[2];
  RowsInOrder(even, odd, sum[0], sum[1]);
  for (int g = 2 * h; g < 2 * h + 2 && 8 * g < valid; ++g) {
    const __m256 prior = add ? LoadGroup(y + 8 * g, valid, g) : _mm256_setzero_ps();
    StoreGroup(y + 8 * g, valid, g, _mm256_fmadd_ps(sum[g - 2 * h], scale, prior));
  }
}

// FP8, as the bf16 tier: each 128-input scale block's sums unscaled (in units of 2^-120), by the
// same kernels as bf16 weights, then y = sum · (scale · 2^120) + y once per block, instead of
// every widened weight multiplied by its scale.
template <int MR>
void Fp8Panel(const PanelCall& c) {
  alignas(32) float sums[MR][kPanelRows];  // each half's even rows, then its odd rows (WidenFp8)
  float* rows[MR];
  for (int m = 0; m < MR; ++m) rows[m] = sums[m];
  const auto* x = static_cast<const float*>(c.x);
  const auto* panel = static_cast<const uint8_t*>(c.panel);
  for (int64_t kp = 0; kp < c.kn / 2;) {
    const int64_t block = (c.k0 + 2 * kp) / 128;
    const int64_t end = std::min(c.kn / 2, ((block + 1) * 128 - c.k0) / 2);
    PanelCall b = c;
    b.x = x + 2 * kp * MR;
    b.panel = panel + kp * kPanelPair;
    b.k0 = c.k0 + 2 * kp;
    b.kn = 2 * (end - kp);
    b.y = rows;
    b.valid = kPanelRows;
    b.accumulate = false;
    if (c.ahead != nullptr) {  // this block's share of the lines
      const int64_t lines = (c.ahead_bytes + 63) / 64, pairs = c.kn / 2;
      const int64_t from = kp * lines / pairs, to = end * lines / pairs;
      b.ahead = c.ahead + 64 * from;
      b.ahead_bytes = 64 * (to - from);
    }
    Panel<MR>(b, WidenFp8{static_cast<const uint8_t*>(b.panel)});
    const __m256 scale = _mm256_set1_ps(c.scales[block] * 0x1p120f);
    const bool add = c.accumulate || block * 128 > c.k0;
    for (int m = 0; m < MR; ++m)
      for (int h = 0; h < 2 && 16 * h < c.valid; ++h)
        ScaleHalfInto(_mm256_load_ps(sums[m] + 16 * h), _mm256_load_ps(sums[m] + 16 * h + 8), scale, add, h, c.y[m],
                      c.valid);
    kp = end;
  }
}

void PanelBf16(const PanelCall& c) { CallWithCount<kMaxMr>(c.mr, [](auto mr) { return &Bf16Panel<mr>; }, c); }
void PanelFp8(const PanelCall& c) { CallWithCount<kMaxMr>(c.mr, [](auto mr) { return &Fp8Panel<mr>; }, c); }

// Fp8Panel<1> over two panels at once. Each output's chain is two dependent multiply-adds an
// input pair, and one panel's four chains leave the FMA units waiting on their latency: a token's
// FP8 product ran, hot in L2, at about the DRAM read speed of two threads (bf16's at twice it),
// so batch-1 decode of an FP8 checkpoint was bound by both. Eight chains, the same bits. One
// token, alternating in one process (medians): 256 × 1,024 hot on one thread 20.3 -> 15.9 and
// 14.7 -> 12.9 us; 64 matrices of 1,024 × 1,024 from DRAM on two threads 44.9 -> 39.2 and
// 33.1 -> 31.6 us.
void Fp8PanelPair(const PanelCall& c) {
  const auto* x = static_cast<const float*>(c.x);
  const auto* panel = static_cast<const uint8_t*>(c.panel);
  float* const y = c.y[0];
  for (int64_t kp = 0; kp < c.kn / 2;) {
    const int64_t block = (c.k0 + 2 * kp) / 128;
    const int64_t end = std::min(c.kn / 2, ((block + 1) * 128 - c.k0) / 2);
    const WidenFp8 first{panel}, second{panel + c.next_panel};
    __m256 a[4], b[4];  // each panel's half 0 even, odd rows, half 1 even, odd rows (WidenFp8)
    for (int i = 0; i < 4; ++i) a[i] = b[i] = _mm256_setzero_ps();
    for (; kp < end; ++kp) {
      first.Prefetch(kp, 0);
      second.Prefetch(kp, 0);
      const __m256 x0 = _mm256_broadcast_ss(x + 2 * kp), x1 = _mm256_broadcast_ss(x + 2 * kp + 1);
      for (int h = 0; h < 2; ++h) {
        __m256 w0[2], w1[2];
        first(kp, h, w0, w1);
        a[2 * h] = _mm256_fmadd_ps(x1, w1[0], _mm256_fmadd_ps(x0, w0[0], a[2 * h]));
        a[2 * h + 1] = _mm256_fmadd_ps(x1, w1[1], _mm256_fmadd_ps(x0, w0[1], a[2 * h + 1]));
        second(kp, h, w0, w1);
        b[2 * h] = _mm256_fmadd_ps(x1, w1[0], _mm256_fmadd_ps(x0, w0[0], b[2 * h]));
        b[2 * h + 1] = _mm256_fmadd_ps(x1, w1[1], _mm256_fmadd_ps(x0, w0[1], b[2 * h + 1]));
      }
    }
    const __m256 scale = _mm256_set1_ps(c.scales[block] * 0x1p120f);
    const bool add = c.accumulate || block * 128 > c.k0;
    for (int h = 0; h < 2; ++h) {
      ScaleHalfInto(a[2 * h], a[2 * h + 1], scale, add, h, y, kPanelRows);
      ScaleHalfInto(b[2 * h], b[2 * h + 1], scale, add, h, y + kPanelRows, kPanelRows);
    }
  }
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

// A sum of 16 lanes held as two 8-wide halves (lane l of the 16 sums the elements at l mod 16 in
// order): lanes l and l + 8, l + 4, l + 2, l + 1 added in that tree, the order of the portable
// ExpScores and of the avx512 tiers' sums.
float Total16(__m256 lo, __m256 hi) {
  const __m256 s8 = _mm256_add_ps(lo, hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// The largest of v[0, n): exact in any order.
float MaxOf(const float* v, int64_t n) {
  __m256 max = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) max = _mm256_max_ps(max, _mm256_loadu_ps(v + i));
  if (i < n) {  // masked-off lanes load 0, which must not count
    const __m256i mask = GroupMask(static_cast<int>(n - i), 0);
    max = _mm256_blendv_ps(max, _mm256_max_ps(max, _mm256_maskload_ps(v + i, mask)), _mm256_castsi256_ps(mask));
  }
  const __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps(max, 1));
  const __m128 m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  return _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
}

// v = e^(v - shift) (rounded to bf16 where asked, to nearest even as F32ToBf16 rounds; Exp8
// never returns NaN) and their sum in Total16's order.
float ExpScores(float* v, int64_t n, float shift, bool bf16) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 lo = _mm256_setzero_ps(), hi = lo;  // lanes 0-7 and 8-15
  for (int64_t i = 0; i < n; i += 8) {
    const bool whole = i + 8 <= n;
    const __m256i mask = GroupMask(static_cast<int>(std::min<int64_t>(n - i, 8)), 0);
    __m256 e = Exp8(_mm256_sub_ps(whole ? _mm256_loadu_ps(v + i) : _mm256_maskload_ps(v + i, mask), s));
    if (bf16) {
      const __m256i bits = _mm256_castps_si256(e);
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
      const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), odd);
      e = _mm256_castsi256_ps(_mm256_and_si256(rounded, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
    }
    if (whole) {
      _mm256_storeu_ps(v + i, e);
    } else {
      _mm256_maskstore_ps(v + i, mask, e);
      e = _mm256_and_ps(e, _mm256_castsi256_ps(mask));
    }
    if (i % 16 == 0) lo = _mm256_add_ps(lo, e);
    else hi = _mm256_add_ps(hi, e);
  }
  return Total16(lo, hi);
}

// ScaleScores: the same multiply per element as the portable loop.
float ScaleScores(float* v, int64_t n, float scale) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, _mm256_mul_ps(_mm256_loadu_ps(v + i), s));
  for (; i < n; ++i) v[i] *= scale;
  return MaxOf(v, n);
}

// Softmax with its sum in Total16's order, as the avx512 tiers sum.
void Softmax(float* v, int64_t n) {
  const __m256 inv = _mm256_set1_ps(1.0f / ExpScores(v, n, MaxOf(v, n), false));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, _mm256_mul_ps(_mm256_loadu_ps(v + i), inv));
  for (; i < n; ++i) v[i] *= _mm256_cvtss_f32(inv);
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

// The lanes of v summed as one tree, ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)).
inline float LaneSum(__m256 v) {
  const __m256 pairs = _mm256_hadd_ps(v, v);        // 0+1, 2+3 | 4+5, 6+7
  const __m256 quads = _mm256_hadd_ps(pairs, pairs);  // (0+1)+(2+3) | (4+5)+(6+7)
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(quads), _mm256_extractf128_ps(quads, 1)));
}

// LaneSum of four vectors at once: lane i of the result is LaneSum of the i-th, bit for bit (the
// same pairs, then quads, then halves added), in three horizontal adds and one add for all four.
inline __m128 LaneSums4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 quads = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(quads), _mm256_extractf128_ps(quads, 1));
}

// Scores of kR rows for kH queries: each (row, query) one multiply-add chain per lane over d
// (lane l takes d ≡ l mod 8, in order, the tail masked), then its lanes summed (LaneSum; four
// queries' at once by LaneSums4, the same bits: 256 rows of 288 for 8 and 128 heads, one thread,
// alternating, 4-7% faster). Each row's vector is loaded once for the kH queries, each query's
// once for the kR rows. Hot in L1, eight queries over 256 rows of 256 (one thread): 3 × 4 ran
// 3.7-4.9 FMA instructions a ns, 2 × 4 2.2-2.5, 4 × 4 2.1-2.5, 1 × 8 2.9-3.1.
template <int kR, int kH>
void ScoresBlock(const float* q, int64_t q_stride, const float* rows, int64_t stride, int64_t dim, float* out,
                 int64_t out_stride) {
  __m256 acc[kR * kH];
  for (int i = 0; i < kR * kH; ++i) acc[i] = _mm256_setzero_ps();
  auto step = [&](int64_t d, __m256i mask, auto whole) __attribute__((always_inline)) {
    __m256 r[kR];
    for (int j = 0; j < kR; ++j) r[j] = Load8<whole()>(rows + j * stride + d, mask);
    for (int h = 0; h < kH; ++h) {
      const __m256 qh = Load8<whole()>(q + h * q_stride + d, mask);
      for (int j = 0; j < kR; ++j) acc[j * kH + h] = _mm256_fmadd_ps(r[j], qh, acc[j * kH + h]);
    }
  };
  int64_t d = 0;
  for (; d + 8 <= dim; d += 8) step(d, __m256i{}, std::true_type{});
  if (d < dim) step(d, GroupMask(static_cast<int>(dim - d), 0), std::false_type{});
  if constexpr (kH == 4) {
    for (int j = 0; j < kR; ++j) {
      alignas(16) float sums[4];
      _mm_store_ps(sums, LaneSums4(acc[j * kH], acc[j * kH + 1], acc[j * kH + 2], acc[j * kH + 3]));
      for (int h = 0; h < kH; ++h) out[h * out_stride + j] = sums[h];
    }
  } else {
    for (int j = 0; j < kR; ++j)
      for (int h = 0; h < kH; ++h) out[h * out_stride + j] = LaneSum(acc[j * kH + h]);
  }
}

// Scores of many queries over the same rows, three rows by four queries at a time (ScoresBlock).
// A score depends on its row, its query and dim alone: not on the other queries or rows. Hot in
// L1, 16 rows of 256 (one thread, medians of 11, two runs): 1.9-2.1x the 8-row transposes it
// replaced for four queries (a decode token's head group on two threads), 1.2-1.4x for eight.
void DotRowsMany(const float* q, int64_t q_stride, int64_t heads, const float* rows, int64_t stride, int64_t n_rows,
                 int64_t dim, float* out, int64_t out_stride) {
  for (int64_t j = 0; j < n_rows; j += 3) {
    const int64_t nr = std::min<int64_t>(3, n_rows - j);
    for (int64_t h = 0; h < heads; h += 4) {
      const float* qh = q + h * q_stride;
      float* o = out + h * out_stride + j;
      WithCount<4>(std::min<int64_t>(4, heads - h), [&](auto kh) __attribute__((always_inline)) {
        constexpr int kH = decltype(kh)::value;
        if (nr == 3) ScoresBlock<3, kH>(qh, q_stride, rows + j * stride, stride, dim, o, out_stride);
        else if (nr == 2) ScoresBlock<2, kH>(qh, q_stride, rows + j * stride, stride, dim, o, out_stride);
        else ScoresBlock<1, kH>(qh, q_stride, rows + j * stride, stride, dim, o, out_stride);
      });
    }
  }
}

void DotRows(const float* q, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* out) {
  DotRowsMany(q, 0, 1, rows, stride, n_rows, dim, out, 0);
}

// y in registers, 16 floats at a time for each of kH (1, 4 or 6) outputs, across all rows (each
// row's 16 floats loaded once for all kH): per element the same multiply-add, in the same order,
// as Axpy. Accumulators in a register array indexed by constants only, which GCC keeps in
// registers (a loop over them it unrolls); 6 outputs: 12 accumulators, enough independent chains
// to keep both FMA pipes busy through their latency (8 wait on it: 45-63% of the FMA peak).
template <int kH, bool kWhole>
void AxpyRowsChunk(const float* w, int64_t w_stride, const float* rows, int64_t stride, int64_t n_rows, int64_t left,
                   float* y, int64_t y_stride) {
  static_assert(kH == 1 || kH == 4 || kH == 6);
  const __m256i m0 = GroupMask(static_cast<int>(std::min<int64_t>(left, 16)), 0);
  const __m256i m1 = GroupMask(static_cast<int>(std::min<int64_t>(left, 16)), 1);
  __m256 a[kH], b[kH];
#pragma GCC unroll 6
  for (int h = 0; h < kH; ++h) a[h] = Load8<kWhole>(y + h * y_stride, m0), b[h] = Load8<kWhole>(y + h * y_stride + 8, m1);
  for (int64_t j = 0; j < n_rows; ++j) {
    const float* r = rows + j * stride;
    const __m256 r0 = Load8<kWhole>(r, m0), r1 = Load8<kWhole>(r + 8, m1);
#pragma GCC unroll 6
    for (int h = 0; h < kH; ++h) {
      const __m256 x = _mm256_broadcast_ss(w + h * w_stride + j);
      a[h] = _mm256_fmadd_ps(x, r0, a[h]), b[h] = _mm256_fmadd_ps(x, r1, b[h]);
    }
  }
#pragma GCC unroll 6
  for (int h = 0; h < kH; ++h) Store8<kWhole>(y + h * y_stride, m0, a[h]), Store8<kWhole>(y + h * y_stride + 8, m1, b[h]);
}

template <int kH>
void AxpyRowsHeads(const float* w, int64_t w_stride, const float* rows, int64_t stride, int64_t n_rows, int64_t dim,
                   float* y, int64_t y_stride) {
  int64_t i0 = 0;
  for (; i0 + 16 <= dim; i0 += 16) AxpyRowsChunk<kH, true>(w, w_stride, rows + i0, stride, n_rows, 16, y + i0, y_stride);
  if (i0 < dim) AxpyRowsChunk<kH, false>(w, w_stride, rows + i0, stride, n_rows, dim - i0, y + i0, y_stride);
}

void AxpyRows(const float* w, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* y) {
  AxpyRowsHeads<1>(w, 0, rows, stride, n_rows, dim, y, 0);
}

// Whether `left` queries or heads start with six at a time: eight take four and four.
bool SixOf(int64_t left) { return left >= 6 && left != 8; }

// Six heads at a time (12 accumulators, two row loads for 12 multiply-adds), then four.
void AxpyRowsMany(const float* w, int64_t w_stride, int64_t heads, const float* rows, int64_t stride, int64_t n_rows,
                  int64_t dim, float* y, int64_t y_stride) {
  int64_t h = 0;
  for (; SixOf(heads - h); h += 6)
    AxpyRowsHeads<6>(w + h * w_stride, w_stride, rows, stride, n_rows, dim, y + h * y_stride, y_stride);
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
    const int64_t j0 = b0 * 16, count = std::min<int64_t>(16 * nb, n - j0);
    if (count == 32) {  // whole blocks stored directly (as DotKeysQueries)
      for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + j0 + 8 * i, acc[i]);
      continue;
    }
    alignas(32) float lanes[32];
    for (int i = 0; i < 2 * nb; ++i) _mm256_store_ps(lanes + 8 * i, acc[i]);
    std::copy(lanes, lanes + count, out + j0);
  }
}

// kQ queries (4 or 6) by one 16-key block (its two 8-lane halves): 2·kQ accumulators, the
// block's two loads and kQ broadcasts for 2·kQ multiply-adds, each (query, key) chain over d in
// order as in DotKeys16. Six queries keep 12 chains in flight, enough to hide the FMA's latency.
template <int kQ>
void DotKeysQueries(const float* q, int64_t q_stride, const float* keys16, int64_t n, int64_t dim, float* out,
                    int64_t out_stride) {
  for (int64_t b = 0; b < (n + 15) / 16; ++b) {
    __m256 lo[kQ], hi[kQ];  // query u's two halves
#pragma GCC unroll 6
    for (int u = 0; u < kQ; ++u) lo[u] = _mm256_setzero_ps(), hi[u] = _mm256_setzero_ps();
    const float* k = keys16 + b * dim * 16;
    for (int64_t d = 0; d < dim; ++d) {
      const __m256 k0 = _mm256_loadu_ps(k + d * 16), k1 = _mm256_loadu_ps(k + d * 16 + 8);
#pragma GCC unroll 6
      for (int u = 0; u < kQ; ++u) {
        const __m256 qd = _mm256_broadcast_ss(q + u * q_stride + d);
        lo[u] = _mm256_fmadd_ps(qd, k0, lo[u]);
        hi[u] = _mm256_fmadd_ps(qd, k1, hi[u]);
      }
    }
    // A whole block's scores stored directly: through a copy (a memcpy call a query, every
    // accumulator spilled around it) they cost a fifth of the block's time at d = 192.
    const int64_t j0 = b * 16, count = std::min<int64_t>(16, n - j0);
#pragma GCC unroll 6
    for (int u = 0; u < kQ; ++u) {
      float* o = out + u * out_stride + j0;
      if (count == 16) {
        _mm256_storeu_ps(o, lo[u]), _mm256_storeu_ps(o + 8, hi[u]);
        continue;
      }
      alignas(32) float lanes[16];
      _mm256_store_ps(lanes, lo[u]);
      _mm256_store_ps(lanes + 8, hi[u]);
      std::copy(lanes, lanes + count, o);
    }
  }
}

// Six queries at a time (SixOf), then four, then one.
void DotKeys16Many(const float* q, int64_t q_stride, int64_t queries, const float* keys16, int64_t n, int64_t dim,
                   float* out, int64_t out_stride) {
  int64_t i = 0;
  for (; SixOf(queries - i); i += 6) DotKeysQueries<6>(q + i * q_stride, q_stride, keys16, n, dim, out + i * out_stride, out_stride);
  for (; i + 4 <= queries; i += 4) DotKeysQueries<4>(q + i * q_stride, q_stride, keys16, n, dim, out + i * out_stride, out_stride);
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
  static const TierKernels k = [] {
    TierKernels t{CpuIsa::kAvx2, false, nullptr, kMaxMr, PanelBf16, PanelFp8, nullptr, nullptr, Exp, nullptr, SiluMul, Dot, Axpy, DotRows, AxpyRows, DotRowsMany, AxpyRowsMany, DotKeys16, DotKeys16Many, Fp8ToF32, Bf16ToF32, FmaProbe, FmaProbe, ReadProbe, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
    t.softmax = Softmax;
    t.scale_scores = ScaleScores;
    t.exp_scores = ExpScores;
    t.panel_fp8_pair = Fp8PanelPair;
    t.many_queries = 6;
    t.axpy_columns = 16;
    return t;
  }();
  return k;
}

}  // namespace daedalus::cpu
