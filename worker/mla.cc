// Multi-head Latent Attention over the paged latent cache, in its two equivalent forms: the CPU
// backend's MlaNaive and MlaAbsorbed.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/buffer.h"
#include "kernels/linear.h"
#include "kernels/ops.h"
#include "worker/cpu_backend.h"

namespace daedalus {
namespace {

struct Dims {
  int64_t H, dn, dr, dv, rkv, dim;  // dim = rkv + dr, one cached row
  int64_t qk() const { return dn + dr; }
};

// Attention is written as per-row scores and weighted sums (DotKeys16, DotRows[Many], AxpyRows[Many]) whose
// summation order depends only on the row and how many keys it sees: a token's attention does not change
// with the batch, the chunking of its prompt or the number of threads (GEMM libraries choose
// blockings by shape, and bf16-rounded activations would turn their last-bit differences into
// visible ones).

// Rows of the cache widened to float a block at a time (a few KB, in L1), never the context.
constexpr int64_t kRowBlock = 16;
// The absorbed form first streams the rows of kWarmRows positions into cache (PagedKvCache::Warm),
// then attends to them a block at a time: a decode step's context is rarely in cache (the step
// streamed the weights since), and the attention's own loads, a few rows at a time between
// multiply-adds, fetch it at a quarter of the speed of a plain stream.
constexpr int64_t kWarmRows = 256;

// Naive form: decompress k_nope and v for every cached position of the slice's sequence (the
// batched GEMM path of prefill). q [T, H, dn + dr] (rotated), o [T, H, dv].
void NaiveSlice(const Dims& d, const AttentionWeights& w, int64_t layer, const SequenceSlice& s, const float* q,
                const PagedKvCache& cache, float scale, float* o) {
  const int64_t S = s.start_pos + s.n_tokens, n = s.n_tokens;
  FloatBuffer latent(S * d.dim), c_kv(S * d.rkv), kv(S * d.H * (d.dn + d.dv));
  cache.Read(*s.pages, layer, S, latent.data());
  for (int64_t t = 0; t < S; ++t) std::memcpy(&c_kv[t * d.rkv], &latent[t * d.dim], d.rkv * 4);
  Linear(c_kv.data(), S, w.kv_b_proj, kv.data());  // [S, H, dn + dv]
  const int64_t ld_kv = d.H * (d.dn + d.dv), ld_q = d.H * d.qk();
  // Each head's keys as q lays out its query ([k_nope | k_pe]), then 16 keys to a lane block
  // (PackKeys16): a score is one multiply-add chain, with no horizontal sum.
  const int64_t per_head = KeysElements(S, d.qk());
  FloatBuffer keys(d.H * per_head);
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < d.H; ++h) {
    FloatBuffer rows(S * d.qk());
    for (int64_t j = 0; j < S; ++j) {
      std::memcpy(&rows[j * d.qk()], &kv[j * ld_kv + h * (d.dn + d.dv)], d.dn * 4);
      std::memcpy(&rows[j * d.qk() + d.dn], &latent[j * d.dim + d.rkv], d.dr * 4);
    }
    PackKeys16(rows.data(), d.qk(), S, d.qk(), &keys[h * per_head]);
  }
  // Work items of one head and kTokenGroup consecutive tokens: their weighted sums share each
  // value row they all see (AxpyRowsMany), then each token adds the rows only it sees. Every
  // output element stays one chain over the rows in order, as AxpyRows alone would give.
  constexpr int64_t kTokenGroup = 4;
  const int64_t groups = (n + kTokenGroup - 1) / kTokenGroup;
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (int64_t h = 0; h < d.H; ++h) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t t0 = g * kTokenGroup, tn = std::min(kTokenGroup, n - t0);
      const int64_t seen_by_all = s.start_pos + t0 + 1, stride = s.start_pos + t0 + tn;
      FloatBuffer scores(tn * stride);
      const float* vh = kv.data() + h * (d.dn + d.dv) + d.dn;
      float* oh = o + (s.offset + t0) * d.H * d.dv + h * d.dv;
      // Scores over the key blocks every token of the group sees in one pass, then each token's
      // remaining keys: every score is the same chain over d either way.
      const float* qg = q + (s.offset + t0) * ld_q + h * d.qk();
      const int64_t shared_keys = seen_by_all / 16 * 16;
      DotKeys16Many(qg, ld_q, tn, &keys[h * per_head], shared_keys, d.qk(), scores.data(), stride);
      for (int64_t i = 0; i < tn; ++i) {
        const int64_t visible = seen_by_all + i;
        float* si = &scores[i * stride];
        DotKeys16(qg + i * ld_q, &keys[h * per_head] + shared_keys * d.qk(), visible - shared_keys, d.qk(), si + shared_keys);
        for (int64_t j = 0; j < visible; ++j) si[j] *= scale;
        Softmax(si, visible);
        std::fill(oh + i * d.H * d.dv, oh + i * d.H * d.dv + d.dv, 0.0f);
      }
      AxpyRowsMany(scores.data(), stride, tn, vh, ld_kv, seen_by_all, d.dv, oh, d.H * d.dv);
      for (int64_t i = 1; i < tn; ++i)
        AxpyRows(&scores[i * stride + seen_by_all], vh + seen_by_all * ld_kv, ld_kv, i, d.dv, oh + i * d.H * d.dv);
    }
  }
}

// Absorbed form, latent part: q_latent [n, H, rkv] and q_pe attend over RMSNorm(c_kv) and k_pe
// directly, reading the cached rows in place a block at a time, once: heads [h0, h1) of a token
// score each block together, then fold it into their outputs with a running maximum and sum
// (the softmax rescaled as the maximum grows), so the context is read once per token, layer and
// head group. A head's result depends only on how many keys it sees (not on which heads share
// its group). Writes those heads of o_latent [n, H, rkv].
void AbsorbedSlice(const Dims& d, int64_t layer, const SequenceSlice& s, int64_t h0, int64_t h1, const float* q_latent,
                   const float* q, const PagedKvCache& cache, float scale, float* o_latent) {
  const int64_t G = h1 - h0;
  // A bf16 cache on a tier with a bf16 dot-product unit: the rows are read in place, the query
  // ([q_latent | q_pe]) and the softmax weights rounded to bf16 as that tier rounds every
  // activation; else the rows widened to float a block at a time.
  const bool bf16_rows = cache.dtype() == DType::kBF16 && HasBf16Attention();
  FloatBuffer rows(bf16_rows ? 0 : kRowBlock * d.dim), scores(G * kRowBlock), rope(G * kRowBlock, 0.0f);
  std::vector<bf16> q16(bf16_rows ? G * d.dim : 0), rows16(bf16_rows ? kRowBlock * d.dim : 0);
  std::vector<float> running_max(G), running_sum(G);
  for (int64_t t = 0; t < s.n_tokens; ++t) {
    const int64_t row = s.offset + t, visible = s.start_pos + t + 1;
    const float* ql = q_latent + (row * d.H + h0) * d.rkv;
    const float* qpe = q + (row * d.H + h0) * d.qk() + d.dn;
    float* ol = o_latent + (row * d.H + h0) * d.rkv;
    std::fill(ol, ol + G * d.rkv, 0.0f);
    std::fill(running_max.begin(), running_max.end(), -std::numeric_limits<float>::infinity());
    std::fill(running_sum.begin(), running_sum.end(), 0.0f);
    if (bf16_rows) {
      for (int64_t h = 0; h < G; ++h) {
        F32ToBf16(ql + h * d.rkv, &q16[h * d.dim], d.rkv);
        F32ToBf16(qpe + h * d.qk(), &q16[h * d.dim + d.rkv], d.dr);
      }
    }
    for (int64_t j0 = 0; j0 < visible; j0 += kRowBlock) {
      const int64_t nb = std::min(kRowBlock, visible - j0);
      if (j0 % kWarmRows == 0) cache.Warm(*s.pages, layer, j0, std::min(kWarmRows, visible - j0));
      const bf16* block16 = nullptr;
      if (bf16_rows) {
        block16 = cache.RowsBf16(*s.pages, layer, j0, nb, rows16.data());
        DotRowsBf16Many(q16.data(), d.dim, G, block16, d.dim, nb, d.dim, scores.data(), kRowBlock);
      } else {
        cache.Read(*s.pages, layer, j0, nb, rows.data());
        DotRowsMany(ql, d.rkv, G, rows.data(), d.dim, nb, d.rkv, scores.data(), kRowBlock);
        DotRowsMany(qpe, d.qk(), G, rows.data() + d.rkv, d.dim, nb, d.dr, rope.data(), kRowBlock);
      }
      for (int64_t h = 0; h < G; ++h) {
        float* sh = &scores[h * kRowBlock];
        float block_max = running_max[h];
        for (int64_t j = 0; j < nb; ++j) {
          sh[j] = (sh[j] + rope[h * kRowBlock + j]) * scale;
          block_max = std::max(block_max, sh[j]);
        }
        if (block_max > running_max[h]) {  // earlier weights shrink by e^(old max - new max)
          const float shrink = std::exp(running_max[h] - block_max);
          running_sum[h] *= shrink;
          float* oh = ol + h * d.rkv;
          for (int64_t i = 0; i < d.rkv; ++i) oh[i] *= shrink;
          running_max[h] = block_max;
        }
        for (int64_t j = 0; j < nb; ++j) sh[j] -= block_max;
        ExpInPlace(sh, nb);
        if (bf16_rows)  // the weights as the sums will use them, so that they normalise exactly
          for (int64_t j = 0; j < nb; ++j) sh[j] = Bf16ToF32(F32ToBf16(sh[j]));
        for (int64_t j = 0; j < nb; ++j) running_sum[h] += sh[j];
      }
      if (bf16_rows) AxpyRowsBf16Many(scores.data(), kRowBlock, G, block16, d.dim, nb, d.rkv, ol, d.rkv);
      else AxpyRowsMany(scores.data(), kRowBlock, G, rows.data(), d.dim, nb, d.rkv, ol, d.rkv);
    }
    for (int64_t h = 0; h < G; ++h) {
      const float inv = 1.0f / running_sum[h];
      float* oh = ol + h * d.rkv;
      for (int64_t i = 0; i < d.rkv; ++i) oh[i] *= inv;
    }
  }
}

// out[rows, h, :] = W_h · in[rows, h, :] for heads h < H: gathers each head's rows, then one
// batched product over the heads (a row's result is the same in any batch: kernels/linear.h).
void PerHeadLinear(const WeightView* w, int64_t H, const std::vector<int64_t>& rows, const float* in,
                   int64_t in_head_stride, int64_t in_row_stride, float* out, int64_t out_head_stride,
                   int64_t out_row_stride) {
  const int64_t n = static_cast<int64_t>(rows.size());
  std::vector<FloatBuffer> x(H), y(H);
  std::vector<LinearProblem> problems;
  for (int64_t h = 0; h < H; ++h) {
    x[h].resize(n * w[h].cols);
    y[h].resize(n * w[h].rows);
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(&x[h][i * w[h].cols], in + rows[i] * in_row_stride + h * in_head_stride, w[h].cols * 4);
    problems.push_back({x[h].data(), n, w[h], y[h].data()});
  }
  LinearBatch(problems.data(), H);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(out + rows[i] * out_row_stride + h * out_head_stride, &y[h][i * w[h].rows], w[h].rows * 4);
}

Dims DimsOf(const ModelConfig& c) {
  return Dims{c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank, c.kv_cache_dim()};
}

}  // namespace

absl::Status CpuBackend::MlaNaive(const MlaOp& op) {
  const Dims d = DimsOf(config_);
  const float scale = static_cast<float>(config_.softmax_scale());
  for (size_t i = 0; i < batch_->slices.size(); ++i)
    if (!absorbed_[i]) NaiveSlice(d, *op.w, op.layer, batch_->slices[i], op.q, cache_, scale, op.o);
  return absl::OkStatus();
}

absl::Status CpuBackend::MlaAbsorbed(const MlaOp& op) {
  const Dims d = DimsOf(config_);
  const float scale = static_cast<float>(config_.softmax_scale());
  const int64_t T = static_cast<int64_t>(batch_->token_ids.size());
  std::vector<const SequenceSlice*> absorbed;
  std::vector<int64_t> absorbed_rows;
  for (size_t i = 0; i < batch_->slices.size(); ++i) {
    if (!absorbed_[i]) continue;
    const SequenceSlice& s = batch_->slices[i];
    absorbed.push_back(&s);
    for (int64_t t = 0; t < s.n_tokens; ++t) absorbed_rows.push_back(s.offset + t);
  }
  if (absorbed.empty()) return absl::OkStatus();
  FloatBuffer q_latent(T * d.H * d.rkv), o_latent(T * d.H * d.rkv);  // [T, H, rkv]
  const int64_t n = static_cast<int64_t>(absorbed.size()), threads = omp_get_max_threads();
  if (n >= threads) {
    // As many sequences as threads or more: the per-head products batched over every row, the
    // attention one sequence per work item.
    PerHeadLinear(op.w->w_uk_t.data(), d.H, absorbed_rows, op.q, d.qk(), d.H * d.qk(), q_latent.data(), d.rkv,
                  d.H * d.rkv);
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < n; ++i)
      AbsorbedSlice(d, op.layer, *absorbed[i], 0, d.H, q_latent.data(), op.q, cache_, scale, o_latent.data());
    PerHeadLinear(op.w->w_uv.data(), d.H, absorbed_rows, o_latent.data(), d.rkv, d.H * d.rkv, op.o, d.dv, d.H * d.dv);
    return absl::OkStatus();
  }
  // Fewer sequences than threads (a small decode batch): work items of (sequence, head group),
  // each reading the context once and projecting its own heads' queries and outputs around its
  // attention, in one parallel region (the per-head products inside it run on the item's
  // thread, to the same bits).
  const int64_t groups = std::min<int64_t>(d.H, (threads + n - 1) / n);
  const int64_t per_group = (d.H + groups - 1) / groups;
#pragma omp parallel for schedule(dynamic)
  for (int64_t item = 0; item < n * groups; ++item) {
    const SequenceSlice& s = *absorbed[item / groups];
    const int64_t h0 = item % groups * per_group, h1 = std::min(d.H, h0 + per_group);
    if (h0 >= h1) continue;
    std::vector<int64_t> rows(s.n_tokens);
    for (int64_t t = 0; t < s.n_tokens; ++t) rows[t] = s.offset + t;
    PerHeadLinear(op.w->w_uk_t.data() + h0, h1 - h0, rows, op.q + h0 * d.qk(), d.qk(), d.H * d.qk(),
                  q_latent.data() + h0 * d.rkv, d.rkv, d.H * d.rkv);
    AbsorbedSlice(d, op.layer, s, h0, h1, q_latent.data(), op.q, cache_, scale, o_latent.data());
    PerHeadLinear(op.w->w_uv.data() + h0, h1 - h0, rows, o_latent.data() + h0 * d.rkv, d.rkv, d.H * d.rkv,
                  op.o + h0 * d.dv, d.dv, d.H * d.dv);
  }
  return absl::OkStatus();
}

}  // namespace daedalus
