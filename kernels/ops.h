// Elementwise and row-wise operations of the DeepSeek layers, on float activations.
#pragma once

#include <cstdint>

namespace daedalus {

// Row-wise and elementwise work over at least this many elements (a prefill's rows) is shared
// over the threads; a decode step's few rows stay on the calling thread, where waking the others
// would cost more than it saves. Each row or element is computed alone either way: the same bits.
constexpr int64_t kShareOverThreads = 65536;

// y[i, :] = x[i, :] / sqrt(mean(x[i, :]²) + eps) * gamma, for `rows` rows of `n`.
// x and y may alias.
void RmsNorm(const float* x, const float* gamma, int64_t rows, int64_t n, float eps, float* y, int64_t x_stride,
             int64_t y_stride);

// out[i, j] = silu(gate[i, j]) * up[i, j]; both [rows, width].
void SiluMulSeparate(const float* gate, const float* up, int64_t rows, int64_t width, float* out);

// Rotates adjacent pairs (v[2i], v[2i+1]) by the angle whose cos/sin are given per pair
// (GPT-J / DeepSeek interleaved layout). v has `dim` elements, cos and sin `dim / 2`.
void RotateInterleaved(float* v, int64_t dim, const float* cos, const float* sin);

// v[i] = e^v[i]: vectorised, relative error below 2e-7 (inputs clamped to [-87, 88]).
void ExpInPlace(float* v, int64_t n);

// In-place numerically stable softmax over n floats.
void Softmax(float* v, int64_t n);

// The steps of a softmax over a block of attention scores, for a running maximum and sum:
// ScaleScores sets v[j] = v[j]·scale and returns the largest;
// ExpScores sets v[j] = e^(v[j] − shift), each rounded to bf16 where `bf16` (as the bf16 weighted
// sums read them, so that the sum normalises them exactly), and returns Σ v[j] over sixteen
// lanes (j mod 16, in order) then a fixed tree: an order fixed by n.
float ScaleScores(float* v, int64_t n, float scale);
float ExpScores(float* v, int64_t n, float shift, bool bf16);

// out[i] = F32ToBf16(in[i]) (core/dtype.h), the same bits, vectorised where the tier has it.
void RoundBf16(const float* in, int64_t n, uint16_t* out);

// Dot product and y += a·x over n floats, on the active CPU tier; each result's summation order
// depends on n alone, so attention over a row does not depend on the batch around it.
float Dot(const float* a, const float* b, int64_t n);
void Axpy(float a, const float* x, float* y, int64_t n);
// out[j] = q · (rows + j·stride) over dim for j < n_rows, in an order fixed by dim (a row's score
// does not depend on the rows beside it); y[:dim] += Σ_j w[j]·rows[j·stride:] in order of j, each
// element's chain Axpy's. Scores and weighted sums of attention, one call per query row.
void DotRows(const float* q, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* out);
void AxpyRows(const float* w, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* y);
// The same for `heads` queries over the same rows (all heads of a token over a block of cached
// latents): DotRows(q + h·q_stride, ...) into out + h·out_stride and AxpyRows(w + h·w_stride,
// ...) into y + h·y_stride, bitwise, with each row loaded once for several heads.
void DotRowsMany(const float* q, int64_t q_stride, int64_t heads, const float* rows, int64_t stride, int64_t n_rows,
                 int64_t dim, float* out, int64_t out_stride);
void AxpyRowsMany(const float* w, int64_t w_stride, int64_t heads, const float* rows, int64_t stride, int64_t n_rows,
                  int64_t dim, float* y, int64_t y_stride);

// Keys for DotKeys16: key j of n (dim floats at rows + j·stride) to out[j / 16][d][j % 16], the
// last block padded with zeros; out holds KeysElements(n, dim) floats.
constexpr int64_t KeysElements(int64_t n, int64_t dim) { return (n + 15) / 16 * 16 * dim; }
void PackKeys16(const float* rows, int64_t stride, int64_t n, int64_t dim, float* out);
// out[j] = q · key_j for j < n: one multiply-add chain per key in order of d, so a key's score
// does not depend on n or on the keys beside it. Attention scores without horizontal sums.
void DotKeys16(const float* q, const float* keys16, int64_t n, int64_t dim, float* out);
// DotKeys16 for `queries` queries (q + i·q_stride into out + i·out_stride) over the same keys,
// bitwise, with each key block loaded once for several queries (tokens of a prompt).
void DotKeys16Many(const float* q, int64_t q_stride, int64_t queries, const float* keys16, int64_t n, int64_t dim,
                   float* out, int64_t out_stride);
// How many queries DotKeys16Many and AxpyRowsMany serve at once at their full width on the
// active tier (4; 6 on avx2, whose 16 registers then hold 12 accumulators): a caller grouping a
// prompt's tokens for them groups this many. No result depends on it.
int64_t ManyQueries();
// Columns AxpyRows[Many] keep in registers per pass over the rows on the active tier (16 on
// avx2, 64 on the AVX-512 tiers): rows laid out in slices of this many columns, each slice's
// rows contiguous, are read in order, one slice a call. No result depends on it.
int64_t AxpyRowsColumns();

// Attention over rows stored in bf16 (the bf16 latent cache) with bf16 operands and float
// accumulation, on tiers with a bf16 dot-product unit (only where HasBf16Attention() holds):
// out[h·out_stride + j] = q_h · row_j over dim for q_h = q + h·q_stride (bf16), and
// y_h[:dim] += Σ_j bf16(w_h[j])·row_j in pairs of rows in order (kernels/cpu/tier.h). Each head's
// result is the same whichever heads share the call.
bool HasBf16Attention();
void DotRowsBf16Many(const uint16_t* q, int64_t q_stride, int64_t heads, const uint16_t* rows, int64_t stride,
                     int64_t n_rows, int64_t dim, float* out, int64_t out_stride);
void AxpyRowsBf16Many(const float* w, int64_t w_stride, int64_t heads, const uint16_t* rows, int64_t stride,
                      int64_t n_rows, int64_t dim, float* y, int64_t y_stride);
// DotRowsBf16Many's scores with each score one multiply-add chain over the pairs of d in order
// (the rows transposed into lanes, 16 at a time, once for every head): faster with many heads
// (DeepSeek-V3's 128), slower with few. Its last bits differ from DotRowsBf16Many's: a caller
// picks one by something that does not change with the batch or the threads.
void DotRowsBf16Transposed(const uint16_t* q, int64_t q_stride, int64_t heads, const uint16_t* rows, int64_t stride,
                           int64_t n_rows, int64_t dim, float* out, int64_t out_stride);

// out[i] = Fp8E4M3ToF32(codes[i]) · scale, bitwise the same on every tier (the FP8 latent cache).
void Fp8ToF32(const uint8_t* codes, int64_t n, float scale, float* out);
// bf16 to float, exact, with the tier's widest loads (the bf16 latent cache's rows).
void WidenBf16(const uint16_t* in, int64_t n, float* out);

}  // namespace daedalus
