// The avx512bf16 tier (and the amx tier's kernels other than its tiles): activations rounded to bf16 pairs,
// VDPBF16PS against the panel layout as stored (no widening at all), float accumulation. One
// instruction does 32 multiply-adds, twice the float FMA's 16.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "core/dtype.h"
#include "kernels/cpu/tier.h"
#include "kernels/panel_layout.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,bmi2")
// After the target pragma, so that its callers' kernels inline into it (it holds no library code).
#include "kernels/cpu/count_dispatch.h"
// GCC 12 warns falsely inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace daedalus::cpu {
namespace {

#include "kernels/cpu/avx512_common.inc"

// 24 accumulators in registers. FP8 too: all tokens in one pass, each weight decoded once (its
// decoding constants then spill to L1; passes of 6 tokens decoded twice, ~15% slower prefill).
constexpr int kMaxMr = 12;

__mmask16 MaskLo(int valid) { return Mask16(valid); }

// One input pair of a panel (rows 0-15 in w_lo, 16-31 in w_hi) times MR tokens' bf16 pairs
// xk[0..MR), into their accumulators.
template <int MR>
__attribute__((always_inline)) inline void DotPair(__m512bh w_lo, __m512bh w_hi, const int32_t* xk, __m512* lo, __m512* hi) {
  for (int m = 0; m < MR; ++m) {
    const __m512bh xb = (__m512bh)_mm512_set1_epi32(xk[m]);
    lo[m] = _mm512_dpbf16_ps(lo[m], w_lo, xb);
    hi[m] = _mm512_dpbf16_ps(hi[m], w_hi, xb);
  }
}

// A bf16 panel is prefetched further ahead for three tokens or more: a call then spends longer on
// each pair, and 4 KB ahead (kPrefetchBytes, avx512_common.inc) left its loads waiting. On an AMD
// EPYC, 32 experts' products from memory (microbenchmark, medians of 7-27 runs in each of the
// machine's states) took, 6 KB ahead against 4 KB: 3 tokens 13% less time with 55-65 GB/s and the
// same at 35; 4 and 8 tokens 11-12% less with 55-65 GB/s, 1% and 5% less at 35; 12 tokens 3-5%
// less; 64 (blocks of 11) 0.6% less. 2 tokens took 3-20% more, so one and two keep 4 KB; 8 KB
// cost 4 and 8 tokens 2-3% at 35 GB/s.
constexpr int64_t Bf16PrefetchBytes(int mr) { return mr >= 3 ? 6144 : kPrefetchBytes; }

// x: [kp][stride] bf16 pairs; the tile's tokens are x[kp·stride + m] for m < MR.
template <int MR>
void Bf16Panel(const PanelCall& c) {
  const __mmask16 mask_lo = MaskLo(c.valid), mask_hi = MaskHi(c.valid);
  __m512 lo[MR], hi[MR];
  for (int m = 0; m < MR; ++m) {
    lo[m] = c.accumulate ? _mm512_maskz_loadu_ps(mask_lo, c.y[m]) : _mm512_setzero_ps();
    hi[m] = c.accumulate ? _mm512_maskz_loadu_ps(mask_hi, c.y[m] + 16) : _mm512_setzero_ps();
  }
  const auto* x = static_cast<const int32_t*>(c.x);
  const auto* panel = static_cast<const uint16_t*>(c.panel);
  for (int64_t kp = 0; kp < c.kn / 2; ++kp) {
    const uint16_t* pair = panel + kp * kPanelPair;
    PrefetchPanel<Bf16PrefetchBytes(MR)>(pair);
    PrefetchPanel<Bf16PrefetchBytes(MR)>(pair + 32);
    DotPair<MR>((__m512bh)_mm512_loadu_si512(pair), (__m512bh)_mm512_loadu_si512(pair + 32), x + kp * MR, lo, hi);
  }
  StoreTile<MR>(c, lo, hi, mask_lo, mask_hi);
}

// e4m3 codes (zero-extended to 16 bits) to bf16, exactly: a normal code's exponent and
// mantissa shifted into place with the bias moved from 7 to 127; a subnormal one (exponent
// field 0: mantissa · 2^-9) from a table; the sign moved to bit 15.
struct Fp8ToBf16 {
  __m512i mag_mask, exp_mask, sign_mask, rebias, subnormal;
  Fp8ToBf16()
      : mag_mask(_mm512_set1_epi16(0x7f)),
        exp_mask(_mm512_set1_epi16(0x78)),
        sign_mask(_mm512_set1_epi16(-32768)),
        rebias(_mm512_set1_epi16(120 << 7)),
        // bf16 of m · 2^-9 for m = 0..7 (lanes 8-31 unused)
        subnormal(_mm512_set_epi64(0, 0, 0, 0, 0, 0, 0x3c603c403c203c00, 0x3bc03b803b000000)) {}

  __attribute__((always_inline)) __m512bh operator()(const uint8_t* codes) const {
    const __m512i c = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes)));
    const __m512i mag = _mm512_and_si512(c, mag_mask);
    __m512i v = _mm512_add_epi16(_mm512_slli_epi16(mag, 4), rebias);
    v = _mm512_mask_permutexvar_epi16(v, _mm512_testn_epi16_mask(c, exp_mask), mag, subnormal);
    v = _mm512_ternarylogic_epi32(v, _mm512_slli_epi16(c, 8), sign_mask, 0xf8);  // v | (c << 8 & sign)
    return (__m512bh)v;
  }
};

// FP8: per 128-input scale block, a block sum in registers (exact bf16 weights), then
// y = block sum · scale + y in memory. `weights(kp, &w_lo, &w_hi)` gives input pair kp of the
// panel as bf16: decoded from its codes, or loaded from a chunk decoded before; `rows(&lo, &hi)`
// puts a block sum's lanes back in row order where the decode left them permuted.
struct RowOrder {
  __attribute__((always_inline)) void operator()(__m512*, __m512*) const {}
};
template <int MR, typename Weights, typename Rows = RowOrder>
__attribute__((always_inline)) inline void ScaledPanel(const PanelCall& c, const Weights& weights,
                                                       const Rows& rows = Rows()) {
  const __mmask16 mask_lo = MaskLo(c.valid), mask_hi = MaskHi(c.valid);
  const auto* x = static_cast<const int32_t*>(c.x);
  for (int64_t kp = 0; kp < c.kn / 2;) {
    const int64_t block = (c.k0 + 2 * kp) / 128;
    const int64_t end = std::min(c.kn / 2, ((block + 1) * 128 - c.k0) / 2);
    __m512 lo[MR], hi[MR];
    for (int m = 0; m < MR; ++m) lo[m] = hi[m] = _mm512_setzero_ps();
    for (; kp < end; ++kp) {
      __m512bh w_lo, w_hi;
      weights(kp, &w_lo, &w_hi);
      DotPair<MR>(w_lo, w_hi, x + kp * MR, lo, hi);
    }
    const __m512 scale = _mm512_set1_ps(c.scales[block]);
    const bool add = c.accumulate || block * 128 > c.k0;
    for (int m = 0; m < MR; ++m) {
      rows(&lo[m], &hi[m]);
      ScaleBlock(lo[m], hi[m], scale, add, mask_lo, mask_hi, c.y[m]);
    }
  }
}

template <int MR>
void Fp8Panel(const PanelCall& c) {
  const auto* panel = static_cast<const uint8_t*>(c.panel);
  const Fp8ToBf16 decode;
  ScaledPanel<MR>(c, [&](int64_t kp, __m512bh* w_lo, __m512bh* w_hi) {
    const uint8_t* pair = panel + kp * kPanelPair;
    PrefetchPanel(pair);
    *w_lo = decode(pair);
    *w_hi = decode(pair + 32);
  });
}

// Fp8Panel on a chunk decoded to bf16 beforehand (DecodeFp8), for products of many token
// blocks: each weight is decoded once, not once per block. The same chains, bitwise.
template <int MR>
void Fp8DecodedPanel(const PanelCall& c) {
  const auto* panel = static_cast<const uint16_t*>(c.panel);
  ScaledPanel<MR>(c, [&](int64_t kp, __m512bh* w_lo, __m512bh* w_hi) {
    *w_lo = (__m512bh)_mm512_loadu_si512(panel + kp * kPanelPair);
    *w_hi = (__m512bh)_mm512_loadu_si512(panel + kp * kPanelPair + 32);
  });
}

// A panel chunk's codes decoded once for all token blocks (decode_fp8). They come from memory and
// are prefetched as the panel kernels prefetch theirs: FP8 prefill ran 3.5-6.6% faster, batch 64
// 4% (AMD EPYC, 35-38 GB/s).
void DecodeFp8(const uint8_t* codes, int64_t pairs, uint16_t* out) {
  const Fp8ToBf16 decode;
  for (int64_t kp = 0; kp < pairs; ++kp) {
    PrefetchPanel(codes + kp * kPanelPair);
    _mm512_storeu_si512(out + kp * kPanelPair, (__m512i)decode(codes + kp * kPanelPair));
    _mm512_storeu_si512(out + kp * kPanelPair + 32, (__m512i)decode(codes + kp * kPanelPair + 32));
  }
}

// e4m3 to bf16 by table, with AVX512_VBMI: 64 codes (one input pair of a panel) at a time, each
// code's bf16 low and high bytes looked up (VPERMI2B over 128 entries; the sign bit is ignored
// by the lookup and put back in the high byte), then interleaved into 16-bit lanes. Six
// instructions per 64 weights where Fp8ToBf16 takes sixteen. The interleave works within 128-bit
// lanes, so `lo` holds the panel rows {0-3, 8-11, 16-19, 24-27} and `hi` rows {4-7, 12-15,
// 20-23, 28-31}, in that order; Unpermute puts accumulators back in row order.
struct Fp8ToBf16Table {
  __m512i lo_a, lo_b, hi_a, hi_b, sign;
  __m512i unpermute_lo, unpermute_hi;  // rows 0-15 and 16-31 from (lo, hi) accumulators
  __attribute__((target("avx512vbmi"))) Fp8ToBf16Table() : sign(_mm512_set1_epi8(static_cast<char>(0x80))) {
    alignas(64) uint8_t lo[128], hi[128];
    for (int code = 0; code < 128; ++code) {
      const uint16_t bits = F32ToBf16(Fp8E4M3ToF32(static_cast<uint8_t>(code)));  // exact
      lo[code] = static_cast<uint8_t>(bits & 0xff);
      hi[code] = static_cast<uint8_t>(bits >> 8);
    }
    lo_a = _mm512_load_si512(lo);
    lo_b = _mm512_load_si512(lo + 64);
    hi_a = _mm512_load_si512(hi);
    hi_b = _mm512_load_si512(hi + 64);
    alignas(64) int32_t idx_lo[16], idx_hi[16];
    for (int r = 0; r < 32; ++r) {
      // Row r sits in lane (r / 8) * 4 + r % 4 of lo (r % 8 < 4) or hi (index + 16 selects hi).
      const int index = (r / 8) * 4 + r % 4 + (r % 8 < 4 ? 0 : 16);
      (r < 16 ? idx_lo[r] : idx_hi[r - 16]) = index;
    }
    unpermute_lo = _mm512_load_si512(idx_lo);
    unpermute_hi = _mm512_load_si512(idx_hi);
  }
  __attribute__((target("avx512vbmi"), always_inline)) void operator()(const uint8_t* codes, __m512bh* lo,
                                                                       __m512bh* hi) const {
    const __m512i c = _mm512_loadu_si512(codes);
    const __m512i low = _mm512_permutex2var_epi8(lo_a, c, lo_b);
    const __m512i high = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(hi_a, c, hi_b), c, sign, 0xf8);
    *lo = (__m512bh)_mm512_unpacklo_epi8(low, high);
    *hi = (__m512bh)_mm512_unpackhi_epi8(low, high);
  }
};

// DecodeFp8 by table: each 32-bit lane (one row's bf16 pair) put back in row order.
__attribute__((target("avx512vbmi"))) void DecodeFp8Vbmi(const uint8_t* codes, int64_t pairs, uint16_t* out) {
  static const Fp8ToBf16Table decode;
  for (int64_t kp = 0; kp < pairs; ++kp) {
    PrefetchPanel(codes + kp * kPanelPair);
    __m512bh lo, hi;
    decode(codes + kp * kPanelPair, &lo, &hi);
    _mm512_storeu_si512(out + kp * kPanelPair, _mm512_permutex2var_epi32((__m512i)lo, decode.unpermute_lo, (__m512i)hi));
    _mm512_storeu_si512(out + kp * kPanelPair + 32,
                        _mm512_permutex2var_epi32((__m512i)lo, decode.unpermute_hi, (__m512i)hi));
  }
}

// Fp8Panel on the table decode: every row's chain of VDPBF16PS is the same, in a different
// lane, so the result is bitwise Fp8Panel's. Its codes are prefetched 6 KB ahead: batch-1 decode
// of an FP8 checkpoint (AMD EPYC, `bench --batches 1`, alternating builds) reached a median 78%
// of its roofline at 44-54 GB/s against 70% with 4 KB (9 runs each), and 92% against 90.5% at
// 30-35 GB/s (14-15 runs each).
constexpr int64_t kFp8PrefetchBytes = 6144;
template <int MR>
__attribute__((target("avx512vbmi"), flatten)) void Fp8PanelVbmi(const PanelCall& c) {
  static const Fp8ToBf16Table decode;
  const auto* panel = static_cast<const uint8_t*>(c.panel);
  ScaledPanel<MR>(
      c,
      [&](int64_t kp, __m512bh* w_lo, __m512bh* w_hi) __attribute__((target("avx512vbmi"))) {
        const uint8_t* pair = panel + kp * kPanelPair;
        PrefetchPanel<kFp8PrefetchBytes>(pair);
        decode(pair, w_lo, w_hi);
      },
      [&](__m512* lo, __m512* hi) {
        const __m512 l = *lo;
        *lo = _mm512_permutex2var_ps(l, decode.unpermute_lo, *hi);
        *hi = _mm512_permutex2var_ps(l, decode.unpermute_hi, *hi);
      });
}

void PanelBf16(const PanelCall& c) { CallWithCount<kMaxMr>(c.mr, [](auto mr) { return &Bf16Panel<mr>; }, c); }
void PanelFp8(const PanelCall& c) { CallWithCount<kMaxMr>(c.mr, [](auto mr) { return &Fp8Panel<mr>; }, c); }
void PanelFp8Decoded(const PanelCall& c) { CallWithCount<kMaxMr>(c.mr, [](auto mr) { return &Fp8DecodedPanel<mr>; }, c); }
void PanelFp8Vbmi(const PanelCall& c) { CallWithCount<kMaxMr>(c.mr, [](auto mr) { return &Fp8PanelVbmi<mr>; }, c); }

// 16 rows of 16 words to 16 columns (r[j] becomes column j): 32-bit, 64-bit and two 128-bit
// interleaving stages.
inline void Transpose16x16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}

// Each row rounded 32 floats at a time (VCVTNE2PS2BF16, round to nearest even) to 16 pairs;
// one row is stored as it is, several are transposed (16 rows, the missing ones zero) so that
// each pair's mr words go out in one masked store.
void PackBf16Pairs(const float* const* rows, int mr, int64_t K, uint32_t* out) {
  const __mmask16 row_mask = static_cast<__mmask16>((1u << mr) - 1);
  for (int64_t k = 0; k < K; k += 32) {
    const int64_t left = K - k, n = std::min<int64_t>(16, (left + 1) / 2);
    const __mmask16 m0 = Mask16(left);
    const __mmask16 m1 = static_cast<__mmask16>(left >= 32 ? 0xffff : left <= 16 ? 0 : (1u << (left - 16)) - 1);
    __m512i r[16];
    for (int i = 0; i < 16; ++i)
      r[i] = i < mr ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, rows[i] + k + 16),
                                                  _mm512_maskz_loadu_ps(m0, rows[i] + k))
                    : _mm512_setzero_si512();
    uint32_t* at = out + k / 2 * mr;
    if (mr == 1) {
      _mm512_mask_storeu_epi32(at, static_cast<__mmask16>((1u << n) - 1), r[0]);
      continue;
    }
    Transpose16x16(r);
    for (int64_t p = 0; p < n; ++p) _mm512_mask_storeu_epi32(at + p * mr, row_mask, r[p]);
  }
}

// Lane i of the result: the sum of v[i]'s 16 lanes, by one tree for every i: within each
// 128-bit block (l0 + l2) + (l1 + l3), then the blocks (b0 + b1) + (b2 + b3).
__attribute__((always_inline)) inline __m512 SumEach16(const __m512 (&v)[16]) {
  __m512 s1[8], s2[4], s3[2];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k)
    s1[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k)
    s2[k] = _mm512_add_ps(_mm512_shuffle_ps(s1[2 * k], s1[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_ps(s1[2 * k], s1[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
#pragma GCC unroll 2
  for (int k = 0; k < 2; ++k)
    s3[k] = _mm512_add_ps(_mm512_shuffle_f32x4(s2[2 * k], s2[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_f32x4(s2[2 * k], s2[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s3[0], s3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(s3[0], s3[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Scores of up to kR = 16 / kH rows for kH heads: 16 chains (16 lanes of pairs in order of d),
// each row and each query loaded once per 32 dims, summed by SumEach16. Missing rows repeat the
// first one and are not stored: a score does not depend on the tile it is in.
template <int kH>
void DotRowsBf16Tile(const uint16_t* q, int64_t q_stride, const uint16_t* rows, int64_t stride, int n_rows,
                     int64_t dim, float* out, int64_t out_stride) {
  constexpr int kR = 16 / kH;
  const uint16_t* r[kR];
  const uint16_t* qh[kH];
  for (int i = 0; i < kR; ++i) r[i] = rows + (i < n_rows ? i : 0) * stride;
  for (int h = 0; h < kH; ++h) qh[h] = q + h * q_stride;
  // Sixteen named accumulators: GCC keeps an array of them in memory across the loop.
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0,
         a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
  for (int64_t d = 0; d < dim; d += 32) {
    const __mmask32 m = dim - d >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << (dim - d)) - 1);
    __m512bh row[kR], qd[kH];
#pragma GCC unroll 16
    for (int i = 0; i < kR; ++i) row[i] = (__m512bh)_mm512_maskz_loadu_epi16(m, r[i] + d);
#pragma GCC unroll 4
    for (int h = 0; h < kH; ++h) qd[h] = (__m512bh)_mm512_maskz_loadu_epi16(m, qh[h] + d);
    // Accumulator I = kR·h + i: query h times row i.
    auto dot = [&](__m512& a, int I) { a = _mm512_dpbf16_ps(a, qd[I / kR], row[I % kR]); };
    dot(a0, 0), dot(a1, 1), dot(a2, 2), dot(a3, 3), dot(a4, 4), dot(a5, 5), dot(a6, 6), dot(a7, 7);
    dot(a8, 8), dot(a9, 9), dot(a10, 10), dot(a11, 11), dot(a12, 12), dot(a13, 13), dot(a14, 14), dot(a15, 15);
  }
  alignas(64) float lanes[16];  // lane kR·h + i: head h, row i
  _mm512_store_ps(lanes, SumEach16({a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15}));
  for (int h = 0; h < kH; ++h)
    for (int i = 0; i < n_rows; ++i) out[h * out_stride + i] = lanes[kR * h + i];
}

void DotRowsBf16(const uint16_t* q, int64_t q_stride, int64_t heads, const uint16_t* rows, int64_t stride,
                 int64_t n_rows, int64_t dim, float* out, int64_t out_stride) {
  // Tiles of four heads while four are left, then two or one heads over 8 or 16 rows.
  for (int64_t h = 0; h < heads;) {
    const int64_t left = heads - h, kh = left >= 4 ? 4 : left >= 2 ? 2 : 1, kr = 16 / kh;
    for (int64_t j = 0; j < n_rows; j += kr) {
      const int n = static_cast<int>(std::min(kr, n_rows - j));
      const uint16_t* qh = q + h * q_stride;
      float* o = out + h * out_stride + j;
      if (kh == 4) DotRowsBf16Tile<4>(qh, q_stride, rows + j * stride, stride, n, dim, o, out_stride);
      else if (kh == 2) DotRowsBf16Tile<2>(qh, q_stride, rows + j * stride, stride, n, dim, o, out_stride);
      else DotRowsBf16Tile<1>(qh, q_stride, rows + j * stride, stride, n, dim, o, out_stride);
    }
    h += kh;
  }
}

// Scores of 16 rows (lanes) for kH queries over the transposed rows' pairs [c0, c0 + cn) (T:
// pair p's 16 lanes at T + 16·(p - c0)), continuing each chain from out where `resume`. A pair
// past dim (odd dim) takes the query's last element alone.
template <int kH>
void ScoresOfLanes(const uint16_t* q, int64_t q_stride, int64_t c0, int64_t cn, int64_t dim, const uint32_t* T,
                   bool resume, __mmask16 lanes, float* out, int64_t out_stride) {
  __m512 acc[kH];
  for (int h = 0; h < kH; ++h)
    acc[h] = resume ? _mm512_maskz_loadu_ps(lanes, out + h * out_stride) : _mm512_setzero_ps();
  const int64_t whole = std::min(cn, dim / 2 - c0);  // pairs with both elements inside dim
  for (int64_t p = 0; p < whole; ++p) {
    const __m512bh t = (__m512bh)_mm512_load_si512(T + 16 * p);
    for (int h = 0; h < kH; ++h) {
      int32_t pair;
      std::memcpy(&pair, q + h * q_stride + 2 * (c0 + p), 4);
      acc[h] = _mm512_dpbf16_ps(acc[h], t, (__m512bh)_mm512_set1_epi32(pair));
    }
  }
  if (whole < cn) {  // the odd last element
    const __m512bh t = (__m512bh)_mm512_load_si512(T + 16 * whole);
    for (int h = 0; h < kH; ++h)
      acc[h] = _mm512_dpbf16_ps(acc[h], t, (__m512bh)_mm512_set1_epi32(q[h * q_stride + dim - 1]));
  }
  for (int h = 0; h < kH; ++h) _mm512_mask_storeu_ps(out + h * out_stride, lanes, acc[h]);
}

// Scores with the rows transposed, 16 at a time, into lanes (row j in lane j, a pair of dims per
// word) and shared by every query, 8 queries at a time: no horizontal sums, and each row is read
// once for all the heads, where the tiles above read it once per 4. Each score is one chain over
// the pairs of d in order, whatever the rows or heads beside it.
void DotRowsBf16Transposed(const uint16_t* q, int64_t q_stride, int64_t heads, const uint16_t* rows, int64_t stride,
                           int64_t n_rows, int64_t dim, float* out, int64_t out_stride) {
  constexpr int64_t kChunkPairs = 320;  // 20 KB of transposed rows: DeepSeek-V3's 576 dims in one chunk
  alignas(64) uint32_t T[kChunkPairs * 16];
  const int64_t pairs = (dim + 1) / 2;
  for (int64_t j0 = 0; j0 < n_rows; j0 += 16) {
    const int nr = static_cast<int>(std::min<int64_t>(16, n_rows - j0));
    const __mmask16 lanes = static_cast<__mmask16>((1u << nr) - 1);
    for (int64_t c0 = 0; c0 < pairs; c0 += kChunkPairs) {
      const int64_t cn = std::min(kChunkPairs, pairs - c0);
      for (int64_t p0 = 0; p0 < cn; p0 += 16) {
        const int64_t d0 = 2 * (c0 + p0);
        const __mmask32 m = dim - d0 >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << (dim - d0)) - 1);
        __m512i r[16];
        for (int j = 0; j < 16; ++j)
          r[j] = j < nr ? _mm512_maskz_loadu_epi16(m, rows + (j0 + j) * stride + d0) : _mm512_setzero_si512();
        Transpose16x16(r);
        for (int i = 0; i < 16; ++i) _mm512_store_si512(T + 16 * (p0 + i), r[i]);
      }
      for (int64_t h = 0; h < heads; h += 8) {
        const uint16_t* qh = q + h * q_stride;
        float* o = out + h * out_stride + j0;
        const bool resume = c0 > 0;
        WithCount<8>(std::min<int64_t>(8, heads - h), [&](auto kh) __attribute__((always_inline)) {
          ScoresOfLanes<decltype(kh)::value>(qh, q_stride, c0, cn, dim, T, resume, lanes, o, out_stride);
        });
      }
    }
  }
}

// 16 floats to bf16 exactly as F32ToBf16 rounds them (to nearest even; NaN stays NaN, quietened).
__attribute__((always_inline)) inline __m256i RoundToBf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v), high = _mm512_srli_epi32(bits, 16);
  const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(high, _mm512_set1_epi32(1)));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, bias), 16);
  const __mmask16 nan =
      _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  return _mm512_cvtepi32_epi16(_mm512_mask_or_epi32(rounded, nan, high, _mm512_set1_epi32(0x40)));
}

// Weighted sums of bf16 rows, kH heads at a time, 32 columns at a time: rows j and j + 1 are
// interleaved into VDPBF16PS's pairs by two in-lane unpacks (columns 0-3, 8-11, 16-19, 24-27
// of the pair in one register, 4-7, 12-15, 20-23, 28-31 in the other) and used by every head,
// whose pair of weights is one broadcast bf16 pair. y is moved into that column order when loaded
// and back when stored: each column's chain is the same as in row order.
template <int kH>
void AxpyRowsBf16Heads(const uint32_t* w_pairs, int64_t pairs, const uint16_t* rows, int64_t stride, int64_t n_rows,
                       int64_t dim, float* y, int64_t y_stride) {
  const __m512i lo_of_y = _mm512_set_epi32(27, 26, 25, 24, 19, 18, 17, 16, 11, 10, 9, 8, 3, 2, 1, 0);
  const __m512i hi_of_y = _mm512_set_epi32(31, 30, 29, 28, 23, 22, 21, 20, 15, 14, 13, 12, 7, 6, 5, 4);
  const __m512i y0_of = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
  const __m512i y1_of = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);
  for (int64_t c = 0; c < dim; c += 32) {
    const __mmask32 m = dim - c >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << (dim - c)) - 1);
    const __mmask16 m0 = static_cast<__mmask16>(m), m1 = static_cast<__mmask16>(m >> 16);
    __m512 lo[kH], hi[kH];
    for (int h = 0; h < kH; ++h) {
      const __m512 y0 = _mm512_maskz_loadu_ps(m0, y + h * y_stride + c);
      const __m512 y1 = _mm512_maskz_loadu_ps(m1, y + h * y_stride + c + 16);
      lo[h] = _mm512_permutex2var_ps(y0, lo_of_y, y1);
      hi[h] = _mm512_permutex2var_ps(y0, hi_of_y, y1);
    }
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t j = 2 * p;
      const __m512i r0 = _mm512_maskz_loadu_epi16(m, rows + j * stride + c);
      const __m512i r1 =
          j + 1 < n_rows ? _mm512_maskz_loadu_epi16(m, rows + (j + 1) * stride + c) : _mm512_setzero_si512();
      const __m512bh a = (__m512bh)_mm512_unpacklo_epi16(r0, r1), b = (__m512bh)_mm512_unpackhi_epi16(r0, r1);
      for (int h = 0; h < kH; ++h) {
        const __m512bh wp = (__m512bh)_mm512_set1_epi32(static_cast<int>(w_pairs[h * pairs + p]));
        lo[h] = _mm512_dpbf16_ps(lo[h], wp, a);
        hi[h] = _mm512_dpbf16_ps(hi[h], wp, b);
      }
    }
    for (int h = 0; h < kH; ++h) {
      _mm512_mask_storeu_ps(y + h * y_stride + c, m0, _mm512_permutex2var_ps(lo[h], y0_of, hi[h]));
      _mm512_mask_storeu_ps(y + h * y_stride + c + 16, m1, _mm512_permutex2var_ps(lo[h], y1_of, hi[h]));
    }
  }
}

void AxpyRowsBf16(const float* w, int64_t w_stride, int64_t heads, const uint16_t* rows, int64_t stride, int64_t n_rows,
                  int64_t dim, float* y, int64_t y_stride) {
  constexpr int kMaxH = 8;
  alignas(64) uint16_t w16[kMaxH * 128];  // each head's weights as bf16, pairs read as one 32-bit word
  const auto* w_pairs = reinterpret_cast<const uint32_t*>(w16);
  for (int64_t h0 = 0; h0 < heads; h0 += kMaxH) {
    const int64_t hn = std::min<int64_t>(kMaxH, heads - h0);
    for (int64_t r0 = 0; r0 < n_rows; r0 += 128) {  // 64 weight pairs per head at a time
      const int64_t rn = std::min<int64_t>(128, n_rows - r0), pn = (rn + 1) / 2;
      for (int64_t h = 0; h < hn; ++h) {
        const float* wh = w + (h0 + h) * w_stride + r0;
        uint16_t* out = w16 + h * 2 * pn;
        for (int64_t i = 0; i < 2 * pn; i += 16) {
          const __mmask16 m = Mask16(rn - i);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), RoundToBf16(_mm512_maskz_loadu_ps(m, wh + i)));
        }
      }
      const uint16_t* r = rows + r0 * stride;
      float* yh = y + h0 * y_stride;
      WithCount<kMaxH>(hn, [&](auto kh) __attribute__((always_inline)) {
        AxpyRowsBf16Heads<decltype(kh)::value>(w_pairs, pn, r, stride, rn, dim, yh, y_stride);
      });
    }
  }
}

// 12 independent VDPBF16PS chains: 32 multiply-adds each.
double DotProbe(int64_t iters) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(0.001f * i);
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3a80);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 12; ++j) a[j] = _mm512_dpbf16_ps(a[j], b, c);
  __m512 sum = a[0];
  for (int j = 1; j < 12; ++j) sum = _mm512_add_ps(sum, a[j]);
  volatile float sink = _mm512_reduce_add_ps(sum);
  (void)sink;
  return static_cast<double>(iters) * 12 * 32 * 2;
}

TierKernels Avx512Bf16Table(bool vbmi) {
  return {CpuIsa::kAvx512Bf16, true, PackBf16Pairs, kMaxMr, PanelBf16, vbmi ? PanelFp8Vbmi : PanelFp8,
          vbmi ? DecodeFp8Vbmi : DecodeFp8, PanelFp8Decoded, ExpAvx512, SoftmaxAvx512,
          SiluMulAvx512, DotAvx512, AxpyAvx512, DotRowsAvx512, AxpyRowsAvx512, DotRowsManyAvx512, AxpyRowsManyAvx512,
          DotKeys16Avx512, DotKeys16ManyAvx512, Fp8ToF32Avx512, Bf16ToF32Avx512, FmaProbeAvx512, DotProbe, ReadProbeAvx512,
          DotRowsBf16, AxpyRowsBf16, DotRowsBf16Transposed, nullptr, nullptr, nullptr,
          ScaleScoresAvx512, ExpScoresAvx512, RoundBf16Avx512};
}

}  // namespace

const TierKernels& Avx512Bf16Kernels() {
  static const TierKernels k = Avx512Bf16Table(HasAvx512Vbmi());
  return k;
}

const TierKernels& Avx512Bf16KernelsWithoutVbmi() {
  static const TierKernels k = Avx512Bf16Table(false);
  return k;
}

}  // namespace daedalus::cpu
