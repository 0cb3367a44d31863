// The kernels one CPU tier provides (kernels/cpu_isa.h). Each tier lives in its own translation
// unit whose kernels are compiled for its instructions (a target pragma after the includes, so
// no inline library code built for AVX-512 can be picked by the linker for a lower tier); the
// shared driver in linear.cc schedules work and calls them through this table.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "kernels/cpu_isa.h"

namespace daedalus::cpu {

// One micro-kernel call: y[0..mr, 0..valid) (+)= x[0..mr, k0..k0+kn) · panelᵀ for one 32-row
// panel (kernels/panel_layout.h). Every output is one accumulation chain over k in order,
// whatever mr is, so a row's result does not depend on the batch.
struct PanelCall {
  // The token block interleaved by input: [kn][mr] floats (float tiers) or [kn / 2][mr] pairs
  // of bf16 in one 32-bit word, low half first (bf16 tiers). Starts at k0.
  const void* x;
  const void* panel;     // the panel's pair k0 / 2: bf16 or fp8 e4m3 codes
  int64_t k0;            // even
  int64_t kn;            // even
  const float* scales;   // fp8: the panel's row of 128 × 128 block scales (indexed by k / 128)
  float* const* y;       // mr output rows, each at the panel's first column
  int mr;                // 1..max_mr
  int valid;             // columns of y to write (1..32)
  bool accumulate;       // add to y (a later k chunk) instead of overwriting it
  // The outputs are not read again soon: the kernel may write them with non-temporal stores
  // (where accumulate is false and each row's 32 columns are whole and 64-byte aligned); the
  // driver fences them before its threads meet.
  bool stream;
  // panel_fp8_pair: bytes from `panel` to the second panel, whose outputs follow the first's
  // 32 in each row of y.
  int64_t next_panel = 0;
  // Bytes to bring into L2 while the call runs, spread over its input pairs (the weights its
  // thread multiplies next; a tier may ignore them); null: none.
  const char* ahead = nullptr;
  int64_t ahead_bytes = 0;
};

struct TierKernels {
  CpuIsa isa;
  bool bf16_activations;  // x rounded to bf16 pairs (dot-product unit) instead of float
  // bf16 tiers: rows[0..mr) of K floats to out[K' / 2][mr] pairs of bf16 (round to nearest
  // even; K' = K padded to even with 0), as PanelCall::x reads them.
  void (*pack_bf16_pairs)(const float* const* rows, int mr, int64_t K, uint32_t* out);
  int max_mr;             // token rows per micro-kernel call
  void (*panel_bf16)(const PanelCall&);
  void (*panel_fp8)(const PanelCall&);  // fp8 scales below 2^7 (FitsFp8Kernel)
  // Products of many token blocks (bf16 tiers; null elsewhere): a panel's chunk of e4m3 codes,
  // `pairs` input pairs from the call's k0, decoded once to bf16 pairs in the panel layout, then
  // panel_fp8_decoded per token block with PanelCall::panel pointing there: bitwise panel_fp8.
  void (*decode_fp8)(const uint8_t* codes, int64_t pairs, uint16_t* out);
  void (*panel_fp8_decoded)(const PanelCall&);
  void (*exp)(float* v, int64_t n);     // v = e^v, relative error < 2.5e-7, clamped to [-87, 88]
  // v = softmax(v) with `exp`, its sum in an order fixed by n; null: the portable loops.
  void (*softmax)(float* v, int64_t n);
  void (*silu_mul)(const float* gate, const float* up, int64_t n, float* out);
  // Σ a[i]·b[i] and y += alpha·x, each element in a fixed order that depends on n alone (not
  // on alignment or on what else is computed): attention scores and weighted sums.
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float alpha, const float* x, float* y, int64_t n);
  // out[j] = q · (rows + j·stride) over dim (in an order fixed by dim: a row's score does not
  // depend on the rows beside it), and y += Σ_j w[j]·(rows + j·stride) over j in order (y[i]'s
  // chain of multiply-adds is axpy's): attention over many keys in one call.
  void (*dot_rows)(const float* q, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* out);
  void (*axpy_rows)(const float* w, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* y);
  // dot_rows and axpy_rows for `heads` queries (q + h·q_stride → out + h·out_stride; weights
  // w + h·w_stride → y + h·y_stride) sharing the rows, each bitwise what the one-query kernel
  // gives; null: the one-query kernel per head.
  void (*dot_rows_many)(const float* q, int64_t q_stride, int64_t heads, const float* rows, int64_t stride, int64_t n_rows,
                        int64_t dim, float* out, int64_t out_stride);
  void (*axpy_rows_many)(const float* w, int64_t w_stride, int64_t heads, const float* rows, int64_t stride, int64_t n_rows,
                         int64_t dim, float* y, int64_t y_stride);
  // out[j] = Σ_d q[d]·key_j[d] for j < n, one multiply-add chain per key in order of d, over
  // keys laid out as PackKeys16 writes them ([ceil(n/16)][dim][16]): no horizontal sums.
  void (*dot_keys16)(const float* q, const float* keys16, int64_t n, int64_t dim, float* out);
  // dot_keys16 for `queries` queries sharing the keys, each bitwise what the one-query kernel
  // gives; null: the one-query kernel per query.
  void (*dot_keys16_many)(const float* q, int64_t q_stride, int64_t queries, const float* keys16, int64_t n, int64_t dim,
                          float* out, int64_t out_stride);
  // out[i] = value(codes[i]) · scale for e4m3 codes: the code's value is exact in float, then one
  // rounding, so every tier gives the same bits (the FP8 latent cache).
  void (*fp8_to_f32)(const uint8_t* codes, int64_t n, float scale, float* out);
  // out[i] = the float whose upper 16 bits are in[i] (exact): the bf16 latent cache's rows.
  void (*bf16_to_f32)(const uint16_t* in, int64_t n, float* out);
  // Probes for bench: multiply-adds done by `iters` rounds of independent float FMA chains,
  // and by the unit the bf16 GEMM uses (the float FMA where weights are widened); the sum of
  // n floats read with the tier's widest loads (n a multiple of 64).
  double (*fp32_fma_probe)(int64_t iters);
  double (*bf16_probe)(int64_t iters);
  float (*read_probe)(const float* v, size_t n);
  // Attention over rows stored in bf16 (the bf16 latent cache) with bf16 operands and float
  // accumulation (VDPBF16PS); null on the float tiers. For each of `heads` queries:
  //   dot_rows_bf16: out[h·out_stride + j] = Σ_d q_h[d]·row_j[d] over `dim` (q_h = q + h·q_stride,
  //     bf16), 16 lanes of pairs in order of d, then a fixed tree: one order per dim;
  //   axpy_rows_bf16: y_h[i] += Σ_j bf16(w_h[j])·row_j[i] for i < dim, the rows in pairs in order
  //     (an odd last row paired with a zero), one chain per y_h[i] continuing across calls.
  //   dot_rows_bf16_transposed: dot_rows_bf16's scores as one chain over the pairs of d in order,
  //     the rows transposed into lanes once per 16 rows for every head (many heads: no sums across
  //     lanes, each row read once).
  // Each head's result is bitwise the same whichever heads share the call.
  void (*dot_rows_bf16)(const uint16_t* q, int64_t q_stride, int64_t heads, const uint16_t* rows, int64_t stride,
                        int64_t n_rows, int64_t dim, float* out, int64_t out_stride);
  void (*axpy_rows_bf16)(const float* w, int64_t w_stride, int64_t heads, const uint16_t* rows, int64_t stride,
                         int64_t n_rows, int64_t dim, float* y, int64_t y_stride);
  void (*dot_rows_bf16_transposed)(const uint16_t* q, int64_t q_stride, int64_t heads, const uint16_t* rows,
                                   int64_t stride, int64_t n_rows, int64_t dim, float* out, int64_t out_stride);
  // The amx tier's tiles (null elsewhere), for BF16 and FP8 weights whose input count K is a
  // multiple of kTileInputs; other weights take the entries above, so which kernel multiplies
  // a weight never depends on the batch.
  //   pack_bf16_tiles: rows[0..mr) (mr <= kTileBlockRows) of K floats to [K / 32][mr'][32] bf16,
  //     mr' = mr rounded up to 16, rounded as pack_bf16_pairs rounds; rows past mr are zero.
  //   tile_panel_bf16: the product with PanelCall::x in that layout (at its k0 / 32nd block) and
  //     k0, kn multiples of 32; each output is one chain of a TDPBF16PS per 32 inputs, in order,
  //     whatever mr is (the instruction's own rounding inside its 32 inputs is the hardware's).
  //   tile_panel_fp8_decoded: the same over a chunk decode_fp8 wrote, one chain per 128-input
  //     scale block, each scaled into y by one float multiply-add.
  void (*pack_bf16_tiles)(const float* const* rows, int mr, int64_t K, uint16_t* out);
  void (*tile_panel_bf16)(const PanelCall&);
  void (*tile_panel_fp8_decoded)(const PanelCall&);
  // The steps of a block of attention scores (kernels/ops.h's ScaleScores and ExpScores, with
  // `exp` above) and F32ToBf16 over n floats (core/dtype.h), each bitwise what those portable
  // loops give; null: the portable loops.
  float (*scale_scores)(float* v, int64_t n, float scale) = nullptr;
  float (*exp_scores)(float* v, int64_t n, float shift, bool bf16) = nullptr;
  void (*round_bf16)(const float* in, int64_t n, uint16_t* out) = nullptr;
  // panel_fp8 for one token over two whole panels of one scale row at once (PanelCall::
  // next_panel), each output the same chain, bitwise; null: one panel a call.
  void (*panel_fp8_pair)(const PanelCall&) = nullptr;
  // Queries dot_keys16_many and axpy_rows_many take at once at their full width (the ops'
  // ManyQueries, kernels/ops.h).
  int many_queries = 4;
  // Columns axpy_rows and axpy_rows_many keep in registers per pass over the rows (the ops'
  // AxpyRowsColumns).
  int axpy_columns = 64;
};

constexpr int64_t kTileInputs = 32;     // inputs per tile step
constexpr int64_t kTileRows = 16;       // tokens per tile of activations
constexpr int64_t kTileBlockRows = 32;  // token rows per tile-kernel call

// The rows a block of m tokens takes in the tile layout: whole tiles.
constexpr int64_t TileRows(int64_t m) { return (m + kTileRows - 1) / kTileRows * kTileRows; }

// Whether the active table multiplies this weight on tiles.
inline bool OnTiles(const TierKernels& k, DType weights, int64_t K) {
  return k.tile_panel_bf16 != nullptr && (weights == DType::kBF16 || weights == DType::kF8E4M3) && K % kTileInputs == 0;
}

const TierKernels& GenericKernels();
const TierKernels& Avx2Kernels();
const TierKernels& Avx512Kernels();
const TierKernels& Avx512Bf16Kernels();
// The avx512bf16 table with the tile kernels and the tile probe. Only its tile entries need
// AMX: the rest runs on any avx512bf16 machine.
const TierKernels& AmxKernels();
// The avx512bf16 table with FP8 decoded by shifts even where AVX512_VBMI's table decode is
// used (HasAvx512Vbmi): tests compare the two.
const TierKernels& Avx512Bf16KernelsWithoutVbmi();
// The table of the active tier (ActiveCpuIsa()).
const TierKernels& Kernels();

// Tests: Kernels() returns `table` while this lives (one at a time), whatever the tier.
class ScopedKernelsForTest {
 public:
  explicit ScopedKernelsForTest(const TierKernels* table);
  ~ScopedKernelsForTest();
  ScopedKernelsForTest(const ScopedKernelsForTest&) = delete;
  ScopedKernelsForTest& operator=(const ScopedKernelsForTest&) = delete;
};

}  // namespace daedalus::cpu
