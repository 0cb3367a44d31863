// The avx512 tier: bf16 and fp8 weights widened to float in registers, 16-wide FMA with float
// accumulation. Activations are broadcast one at a time (outer-product form): no horizontal
// sums, no shuffles; per input pair, 2 loads and 4 widening ops serve 4 × mr FMAs.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "kernels/cpu/tier.h"
#include "kernels/panel_layout.h"

// Everything below is compiled for AVX-512; the headers above are not.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi2")
// After the target pragma, so that what it instantiates is compiled for this tier.
#include "kernels/cpu/count_dispatch.h"
// GCC 12 warns falsely inside its own AVX-512 intrinsics (an undefined pass-through operand
// the unmasked forms never read).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace daedalus::cpu {
namespace {

#include "kernels/cpu/avx512_common.inc"

constexpr int kMaxMr = 12;  // 24 accumulators in registers

// The MR × 32 float tile: rows 0-15 in lo, 16-31 in hi.
template <int MR>
struct Tile {
  __m512 lo[MR], hi[MR];
  __mmask16 mask_lo, mask_hi;

  explicit Tile(const PanelCall& c)
      : mask_lo(Mask16(c.valid)), mask_hi(MaskHi(c.valid)) {
    for (int m = 0; m < MR; ++m) {
      lo[m] = c.accumulate ? _mm512_maskz_loadu_ps(mask_lo, c.y[m]) : _mm512_setzero_ps();
      hi[m] = c.accumulate ? _mm512_maskz_loadu_ps(mask_hi, c.y[m] + 16) : _mm512_setzero_ps();
    }
  }
  // One input k: the tokens' values at k (xk[m]) against the widened weights of rows 0-15, 16-31.
  __attribute__((always_inline)) void Update(const float* xk, __m512 w_lo, __m512 w_hi) {
    for (int m = 0; m < MR; ++m) {
      const __m512 xb = _mm512_set1_ps(xk[m]);
      lo[m] = _mm512_fmadd_ps(xb, w_lo, lo[m]);
      hi[m] = _mm512_fmadd_ps(xb, w_hi, hi[m]);
    }
  }
  void Store(const PanelCall& c) const { StoreTile<MR>(c, lo, hi, mask_lo, mask_hi); }
};

template <int MR>
void Bf16Panel(const PanelCall& c) {
  Tile<MR> t(c);
  const auto* x = static_cast<const float*>(c.x);
  const auto* panel = static_cast<const uint16_t*>(c.panel);
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t kp = 0; kp < c.kn / 2; ++kp) {
    const uint16_t* pair = panel + kp * kPanelPair;
    PrefetchPanel(pair);
    PrefetchPanel(pair + 32);
    const __m512i raw_lo = _mm512_loadu_si512(pair), raw_hi = _mm512_loadu_si512(pair + 32);
    const float* xk = x + 2 * kp * MR;
    t.Update(xk, _mm512_castsi512_ps(_mm512_slli_epi32(raw_lo, 16)), _mm512_castsi512_ps(_mm512_slli_epi32(raw_hi, 16)));
    t.Update(xk + MR, _mm512_castsi512_ps(_mm512_and_si512(raw_lo, high)),
             _mm512_castsi512_ps(_mm512_and_si512(raw_hi, high)));
  }
  t.Store(c);
}

// FP8: a half's 32 codes (16 rows × the pair) sign-extended as 16-bit lanes into 32 bits. The
// first code shifted up by 24 and arithmetically down by 4, the second (bits 8-15, its sign
// extended above) up by 12: its exponent and mantissa land in a float's exponent and mantissa
// fields and its sign in bit 31 (masked): the code's value times 2^-120, subnormals included,
// exactly.
template <int kShift>
__attribute__((always_inline)) inline __m512 WidenFp8(__m512i v, __m512i keep) {
  const __m512i bits = kShift == 16 ? _mm512_and_si512(_mm512_slli_epi32(v, 12), keep)
                                    : _mm512_and_si512(_mm512_srai_epi32(_mm512_slli_epi32(v, kShift), 4), keep);
  return _mm512_castsi512_ps(bits);
}

// As the bf16 tier: each 128-input scale block summed unscaled (in units of 2^-120), then
// y = sum · (scale · 2^120) + y once per block (scales < 2^7), instead of every widened weight
// multiplied by its scale.
template <int MR>
void Fp8Panel(const PanelCall& c) {
  const auto* x = static_cast<const float*>(c.x);
  const auto* panel = static_cast<const uint8_t*>(c.panel);
  const __m512i keep = _mm512_set1_epi32(static_cast<int>(0x87f00000u));
  PanelCall fresh = c;
  fresh.accumulate = false;  // each block's tile starts from zero
  for (int64_t kp = 0; kp < c.kn / 2;) {
    const int64_t block = (c.k0 + 2 * kp) / 128;
    const int64_t end = std::min(c.kn / 2, ((block + 1) * 128 - c.k0) / 2);
    Tile<MR> t(fresh);
    for (; kp < end; ++kp) {
      const uint8_t* pair = panel + kp * kPanelPair;
      PrefetchPanel(pair);
      const __m512i v_lo = _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pair)));
      const __m512i v_hi = _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pair + 32)));
      const float* xk = x + 2 * kp * MR;
      t.Update(xk, WidenFp8<24>(v_lo, keep), WidenFp8<24>(v_hi, keep));
      t.Update(xk + MR, WidenFp8<16>(v_lo, keep), WidenFp8<16>(v_hi, keep));
    }
    const __m512 scale = _mm512_set1_ps(c.scales[block] * 0x1p120f);
    const bool add = c.accumulate || block * 128 > c.k0;
    for (int m = 0; m < MR; ++m) ScaleBlock(t.lo[m], t.hi[m], scale, add, t.mask_lo, t.mask_hi, c.y[m]);
  }
}

void PanelBf16(const PanelCall& c) { CallWithCount<kMaxMr>(c.mr, [](auto mr) { return &Bf16Panel<mr>; }, c); }
void PanelFp8(const PanelCall& c) { CallWithCount<kMaxMr>(c.mr, [](auto mr) { return &Fp8Panel<mr>; }, c); }

}  // namespace

const TierKernels& Avx512Kernels() {
  static const TierKernels k{CpuIsa::kAvx512, false, nullptr, kMaxMr,   PanelBf16, PanelFp8, nullptr, nullptr,
                             ExpAvx512, SoftmaxAvx512, SiluMulAvx512, DotAvx512, AxpyAvx512, DotRowsAvx512, AxpyRowsAvx512, DotRowsManyAvx512, AxpyRowsManyAvx512, DotKeys16Avx512, DotKeys16ManyAvx512, Fp8ToF32Avx512, Bf16ToF32Avx512, FmaProbeAvx512, FmaProbeAvx512, ReadProbeAvx512, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                             ScaleScoresAvx512, ExpScoresAvx512, RoundBf16Avx512};
  return k;
}

}  // namespace daedalus::cpu
