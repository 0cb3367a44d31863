// The amx tier: the avx512bf16 table, with BF16 and FP8 products whose input count is a multiple
// of 32 on AMX tiles (TDPBF16PS: 16 × 16 × 32 multiply-adds per instruction, against VDPBF16PS's 32)
// and the tile unit's own probe. The tile code is kernels/cpu/amx_tiles.inc; here its
// instructions are inline assembly, each tile load and store with a memory clobber so that the
// compiler orders them with the plain loads and stores around them.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/tier.h"
#include "kernels/linear.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,bmi2")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define DAEDALUS_TILE_CONFIG(cfg) __asm__ volatile("ldtilecfg %0" ::"m"(*(cfg)))
#define DAEDALUS_TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
#define DAEDALUS_TILE_LOAD(t, p, stride) \
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(p), "r"(static_cast<int64_t>(stride)) : "memory")
#define DAEDALUS_TILE_STORE(t, p, stride) \
  __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(p), "r"(static_cast<int64_t>(stride)) : "memory")
#define DAEDALUS_TILE_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#define DAEDALUS_TILE_RELEASE() __asm__ volatile("tilerelease" ::: "memory")
// The weights 4 KB ahead into L2, as the avx512bf16 kernels prefetch (kernels/cpu/avx512_common.inc).
#define DAEDALUS_TILE_PREFETCH(p)               \
  for (int line = 0; line < 2048; line += 64) \
  _mm_prefetch(reinterpret_cast<const char*>(p) + 4096 + line, _MM_HINT_T1)

namespace daedalus::cpu {
namespace {

#include "kernels/cpu/amx_tiles.inc"

// 32 floats at a time to bf16 (VCVTNE2PS2BF16, as PackBf16Pairs rounds), stored as they come:
// a tile row is 32 consecutive inputs of one token.
void PackBf16Tiles(const float* const* rows, int mr, int64_t K, uint16_t* out) {
  const int64_t padded = TileRows(mr);
  for (int64_t k = 0; k < K; k += kTileInputs) {
    const int64_t left = K - k;
    const __mmask16 m0 = static_cast<__mmask16>(left >= 16 ? 0xffff : (1u << left) - 1);
    const __mmask16 m1 = static_cast<__mmask16>(left >= 32 ? 0xffff : left <= 16 ? 0 : (1u << (left - 16)) - 1);
    uint16_t* block = out + k * padded;
    for (int m = 0; m < padded; ++m) {
      const __m512i v = m < mr ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, rows[m] + k + 16),
                                                              _mm512_maskz_loadu_ps(m0, rows[m] + k))
                               : _mm512_setzero_si512();
      _mm512_storeu_si512(block + m * kTileInputs, v);
    }
  }
}

}  // namespace

const TierKernels& AmxKernels() {
  static const TierKernels k = [] {
    TierKernels t = Avx512Bf16Kernels();
    t.isa = CpuIsa::kAmx;
    t.bf16_probe = TileProbe;
    t.pack_bf16_tiles = PackBf16Tiles;
    t.tile_panel_bf16 = TilePanelBf16;
    t.tile_panel_fp8_decoded = TilePanelFp8Decoded;
    return t;
  }();
  return k;
}

}  // namespace daedalus::cpu
