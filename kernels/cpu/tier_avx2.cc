// The avx2 tier (AVX2 + FMA, e.g. many AMD EPYC): bf16 and fp8 weights widened to float,
// 8-wide FMA with float accumulation, outer-product form as the avx512 tier. Here the panel
// kernels; the row kernels (softmax, attention's sums, conversions, probes) in avx2_rows.inc.
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

#include "kernels/cpu/avx2_rows.inc"

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
