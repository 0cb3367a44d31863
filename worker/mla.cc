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

// Rows of the cache widened to float a block at a time (in L2: 72 KB of bench's latents, 144 KB
// of DeepSeek-V3's), never the context; a bf16 cache on a tier with a bf16 dot-product unit is
// read in place. Each call of the weighted sums then loads and stores its heads' outputs once per
// 64 rows, and each head's softmax steps run on 64 scores: one 256-row segment of 8 heads, one
// thread on avx2 (the kernels alone, medians of 7, two runs), 43.1 and 63.1 us in blocks of 16
// rows, 37.6 and 56.1 in blocks of 64.
constexpr int64_t kRowBlock = 64;
constexpr int64_t kBf16RowBlock = 64;
// Models with at least this many heads score bf16 rows transposed into lanes (DotRowsBf16Transposed;
// one thread, rows in cache: 222-225 against 140-161 GFLOP/s with 128 heads, no faster with 8).
// The choice follows the model, never the head group, so a head's scores do not depend on the threads.
constexpr int64_t kTransposedScoresHeads = 16;
// The absorbed form attends to a token's keys in segments of kSegmentRows positions, and first
// streams each segment's rows into cache (PagedKvCache::Warm): a decode step's context is rarely
// in cache (the step streamed the weights since), and the attention's own loads, a few rows at a
// time between multiply-adds, fetch it at a quarter of the speed of a plain stream.
constexpr int64_t kSegmentRows = 256;

// The naive form's large buffers (the context's latent rows, its decompressed keys and values,
// the packed keys and values: ~110 MB a layer for DeepSeek-V3's 128 heads at 512 positions), kept
// by the calling thread from call to call, grown when a longer context needs more: fresh ones
// that large come from mmap each time, and the kernel zeroes every page.
struct NaiveBuffers {
  FloatBuffer latent, c_kv, kv, keys, values;  // the calling thread's
  FloatBuffer head_keys, group_scores;          // each thread's own, in the parallel loops
};
NaiveBuffers& NaiveScratch() {
  thread_local NaiveBuffers buffers;
  return buffers;
}

// Naive form: decompress k_nope and v for every cached position of the slice's sequence (the
// batched GEMM path of prefill). q [T, H, dn + dr] (rotated), o [T, H, dv].
void NaiveSlice(const Dims& d, const AttentionWeights& w, int64_t layer, const SequenceSlice& s, const float* q,
                const PagedKvCache& cache, float scale, float* o) {
  const int64_t S = s.start_pos + s.n_tokens, n = s.n_tokens;
  NaiveBuffers& scratch = NaiveScratch();
  FloatBuffer& latent = AtLeast(scratch.latent, S * d.dim);
  FloatBuffer& c_kv = AtLeast(scratch.c_kv, S * d.rkv);
  FloatBuffer& kv = AtLeast(scratch.kv, S * d.H * (d.dn + d.dv));
  cache.Read(*s.pages, layer, S, latent.data());
  for (int64_t t = 0; t < S; ++t) std::memcpy(&c_kv[t * d.rkv], &latent[t * d.dim], d.rkv * 4);
  Linear(c_kv.data(), S, w.kv_b_proj, kv.data());  // [S, H, dn + dv]
  const int64_t ld_kv = d.H * (d.dn + d.dv), ld_q = d.H * d.qk();
  // Each head's keys as q lays out its query ([k_nope | k_pe]), then 16 keys to a lane block
  // (PackKeys16): a score is one multiply-add chain, with no horizontal sum. Each head's values
  // in slices of the columns the weighted sums keep in registers per pass (AxpyRowsColumns), each
  // slice's rows contiguous ([dv / slice][S][slice]): the sums run slice by slice, and a slice's
  // rows stream in order. As [S, dv] rows, avx2's 16-column passes stepped through memory dv
  // floats at a time and, once a head's values outgrew L2, ran at 0.38-0.42 of the FMA probe
  // against 0.78-0.88 (one thread, 1,024-4,096 rows, dv = 128, the same bits); in kv one head's
  // rows are H·(dn + dv) floats apart, farther still.
  const int64_t per_head = KeysElements(S, d.qk());
  const int64_t slice = std::min(AxpyRowsColumns(), d.dv), slices = (d.dv + slice - 1) / slice;
  const int64_t per_head_values = slices * S * slice;
  FloatBuffer& keys = AtLeast(scratch.keys, d.H * per_head);
  FloatBuffer& values = AtLeast(scratch.values, d.H * per_head_values);
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < d.H; ++h) {
    float* rows = AtLeast(NaiveScratch().head_keys, S * d.qk()).data();
    for (int64_t j = 0; j < S; ++j) {
      std::memcpy(&rows[j * d.qk()], &kv[j * ld_kv + h * (d.dn + d.dv)], d.dn * 4);
      std::memcpy(&rows[j * d.qk() + d.dn], &latent[j * d.dim + d.rkv], d.dr * 4);
      const float* v = &kv[j * ld_kv + h * (d.dn + d.dv) + d.dn];
      for (int64_t c = 0; c < slices; ++c)
        std::memcpy(&values[h * per_head_values + (c * S + j) * slice], v + c * slice,
                    std::min(slice, d.dv - c * slice) * 4);
    }
    PackKeys16(rows, d.qk(), S, d.qk(), &keys[h * per_head]);
  }
  // Work items of one head and `group` consecutive tokens: the scores of every key the
  // group's last token sees, for all its tokens at once, and their weighted sums over the same
  // rows, each key and value row loaded once for the group. A token's keys past its own are
  // scored and not used, and weigh zero in the sums: every score is the same chain over d and
  // every output element the same chain over the rows as for the token alone (a zero weight
  // adds nothing to a finite sum).
  const int64_t group = ManyQueries();
  const int64_t groups = (n + group - 1) / group;
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (int64_t h = 0; h < d.H; ++h) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t t0 = g * group, tn = std::min(group, n - t0);
      const int64_t stride = s.start_pos + t0 + tn;  // keys the group's last token sees
      float* scores = AtLeast(NaiveScratch().group_scores, tn * stride).data();
      const float* vh = values.data() + h * per_head_values;
      float* oh = o + (s.offset + t0) * d.H * d.dv + h * d.dv;
      const float* qg = q + (s.offset + t0) * ld_q + h * d.qk();
      DotKeys16Many(qg, ld_q, tn, &keys[h * per_head], stride, d.qk(), scores, stride);
      for (int64_t i = 0; i < tn; ++i) {
        const int64_t visible = stride - tn + 1 + i;
        float* si = &scores[i * stride];
        ScaleScores(si, visible, scale);
        Softmax(si, visible);
        std::fill(si + visible, si + stride, 0.0f);
        std::fill(oh + i * d.H * d.dv, oh + i * d.H * d.dv + d.dv, 0.0f);
      }
      for (int64_t c = 0; c < slices; ++c)
        AxpyRowsMany(scores, stride, tn, vh + c * S * slice, slice, stride, std::min(slice, d.dv - c * slice),
                     oh + c * slice, d.H * d.dv);
    }
  }
}

// Absorbed form, latent part: q_latent [n, H, rkv] and q_pe attend over RMSNorm(c_kv) and k_pe
// directly, reading the cached rows in place a block at a time, once: heads [h0, h1) of a token
// score each block together, then fold it into their outputs with a running maximum and sum
// (the softmax rescaled as the maximum grows), so the context is read once per token, layer and
// head group. A token's keys are attended in segments of kSegmentRows positions, each with its
// own maximum and sum, folded together in order (FoldSegment): one token's segments can then run
// on different threads, and its result is the same whichever thread ran which. A head's result
// depends only on how many keys it sees (not on which heads share its group, or the threads).

// A segment's heads: unnormalised outputs [G, rkv] (weights relative to max), maxima and sums [G].
struct Partial {
  float* o;
  float* max;
  float* sum;
};

// A bf16 cache on a tier with a bf16 dot-product unit: the rows are read in place, the query
// and the softmax weights rounded to bf16 as that tier rounds every activation; else the rows
// widened to float a block at a time.
bool Bf16Rows(const PagedKvCache& cache) { return cache.dtype() == DType::kBF16 && HasBf16Attention(); }

// Heads [h0, h1) of one token's query laid out as a cached row, [h1 - h0][dim] = [q_latent | q_pe]
// per head, built once per token and read by each of its segments: a score is then one dot
// product over the row (the latent and rotary parts in one chain). In bf16 where Bf16Rows.
struct RowQuery {
  FloatBuffer f;
  BufferOf<bf16> b;
};
RowQuery QueryOf(const Dims& d, int64_t row, int64_t h0, int64_t h1, const float* q_latent, const float* q,
                 const PagedKvCache& cache) {
  RowQuery out;
  const int64_t G = h1 - h0;
  const bool rounded = Bf16Rows(cache);
  if (rounded) out.b = BufferOf<bf16>(G * d.dim);
  else out.f = FloatBuffer(G * d.dim);
  for (int64_t h = h0; h < h1; ++h) {
    const float* latent = q_latent + (row * d.H + h) * d.rkv;
    const float* pe = q + (row * d.H + h) * d.qk() + d.dn;
    if (rounded) {
      RoundBf16(latent, d.rkv, &out.b[(h - h0) * d.dim]);
      RoundBf16(pe, d.dr, &out.b[(h - h0) * d.dim + d.rkv]);
    } else {
      std::copy(latent, latent + d.rkv, &out.f[(h - h0) * d.dim]);
      std::copy(pe, pe + d.dr, &out.f[(h - h0) * d.dim + d.rkv]);
    }
  }
  return out;
}

// G heads of one token (their query from QueryOf) over keys [j0, j1) of slice s (at most
// kSegmentRows).
void AttendSegment(const Dims& d, int64_t layer, const SequenceSlice& s, int64_t G, int64_t j0, int64_t j1,
                   const RowQuery& query, const PagedKvCache& cache, float scale, const Partial& out) {
  const bool bf16_rows = Bf16Rows(cache);
  const int64_t block = bf16_rows ? kBf16RowBlock : kRowBlock;
  FloatBuffer rows(bf16_rows ? 0 : block * d.dim), scores(G * block);
  BufferOf<bf16> rows16(bf16_rows ? block * d.dim : 0);
  float* ol = out.o;
  std::fill(ol, ol + G * d.rkv, 0.0f);
  std::fill(out.max, out.max + G, -std::numeric_limits<float>::infinity());
  std::fill(out.sum, out.sum + G, 0.0f);
  cache.Warm(*s.pages, layer, j0, j1 - j0);
  for (int64_t jb = j0; jb < j1; jb += block) {
    const int64_t nb = std::min(block, j1 - jb);
    const bf16* block16 = nullptr;
    if (bf16_rows) {
      block16 = cache.RowsBf16(*s.pages, layer, jb, nb, rows16.data());
      if (d.H >= kTransposedScoresHeads)
        DotRowsBf16Transposed(query.b.data(), d.dim, G, block16, d.dim, nb, d.dim, scores.data(), block);
      else DotRowsBf16Many(query.b.data(), d.dim, G, block16, d.dim, nb, d.dim, scores.data(), block);
    } else {
      cache.Read(*s.pages, layer, jb, nb, rows.data());
      DotRowsMany(query.f.data(), d.dim, G, rows.data(), d.dim, nb, d.dim, scores.data(), block);
    }
    for (int64_t h = 0; h < G; ++h) {
      float* sh = &scores[h * block];
      const float block_max = std::max(out.max[h], ScaleScores(sh, nb, scale));
      if (out.max[h] == -std::numeric_limits<float>::infinity()) {  // the first block: nothing to shrink
        out.max[h] = block_max;
      } else if (block_max > out.max[h]) {  // earlier weights shrink by e^(old max - new max)
        const float shrink = std::exp(out.max[h] - block_max);
        out.sum[h] *= shrink;
        float* oh = ol + h * d.rkv;
        for (int64_t i = 0; i < d.rkv; ++i) oh[i] *= shrink;
        out.max[h] = block_max;
      }
      out.sum[h] += ExpScores(sh, nb, block_max, bf16_rows);
    }
    if (bf16_rows) AxpyRowsBf16Many(scores.data(), block, G, block16, d.dim, nb, d.rkv, ol, d.rkv);
    else AxpyRowsMany(scores.data(), block, G, rows.data(), d.dim, nb, d.rkv, ol, d.rkv);
  }
}

// acc = acc ⊕ part: both rescaled to the larger maximum, then added.
void FoldSegment(int64_t G, int64_t rkv, const Partial& acc, const Partial& part) {
  for (int64_t h = 0; h < G; ++h) {
    const float m = std::max(acc.max[h], part.max[h]);
    const float a = std::exp(acc.max[h] - m), b = std::exp(part.max[h] - m);
    acc.sum[h] = acc.sum[h] * a + part.sum[h] * b;
    float* o = acc.o + h * rkv;
    const float* p = part.o + h * rkv;
    for (int64_t i = 0; i < rkv; ++i) o[i] = o[i] * a + p[i] * b;
    acc.max[h] = m;
  }
}

void Normalise(int64_t G, int64_t rkv, const Partial& acc) {
  for (int64_t h = 0; h < G; ++h) {
    const float inv = 1.0f / acc.sum[h];
    float* o = acc.o + h * rkv;
    for (int64_t i = 0; i < rkv; ++i) o[i] *= inv;
  }
}

int64_t Segments(int64_t visible) { return (visible + kSegmentRows - 1) / kSegmentRows; }

// Every token of slice s, heads [h0, h1), its segments one after another on this thread. Writes
// those heads of o_latent [n, H, rkv].
void AbsorbedSlice(const Dims& d, int64_t layer, const SequenceSlice& s, int64_t h0, int64_t h1, const float* q_latent,
                   const float* q, const PagedKvCache& cache, float scale, float* o_latent) {
  const int64_t G = h1 - h0;
  std::vector<float> max(2 * G), sum(2 * G);
  FloatBuffer part_o(G * d.rkv);
  for (int64_t t = 0; t < s.n_tokens; ++t) {
    const int64_t visible = s.start_pos + t + 1;
    const Partial acc{o_latent + ((s.offset + t) * d.H + h0) * d.rkv, max.data(), sum.data()};
    const Partial part{part_o.data(), max.data() + G, sum.data() + G};
    const RowQuery query = QueryOf(d, s.offset + t, h0, h1, q_latent, q, cache);
    AttendSegment(d, layer, s, G, 0, std::min(visible, kSegmentRows), query, cache, scale, acc);
    for (int64_t j0 = kSegmentRows; j0 < visible; j0 += kSegmentRows) {
      AttendSegment(d, layer, s, G, j0, std::min(visible, j0 + kSegmentRows), query, cache, scale, part);
      FoldSegment(G, d.rkv, acc, part);
    }
    Normalise(G, d.rkv, acc);
  }
}

// One token's heads [h0, h1) whose segments run as separate work items.
struct SplitToken {
  const SequenceSlice* s;
  int64_t t, h0, h1, segments;
};

// The tokens' segments as work items over every thread, a window of segments at a time (their
// partial results held until folded, in order, into each token's output): few tokens over a
// long context keep every thread busy, each reading its own part of the context.
void AbsorbedSplit(const Dims& d, int64_t layer, const std::vector<SplitToken>& tokens, const float* q_latent,
                   const float* q, const PagedKvCache& cache, float scale, float* o_latent, int threads) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  int64_t most = 0, G = 0;
  for (const SplitToken& x : tokens) most = std::max(most, x.segments), G = std::max(G, x.h1 - x.h0);
  const int64_t window = std::max<int64_t>(2, (4 * threads + n - 1) / n);  // segments per token at a time
  std::vector<float> acc_max(n * G), acc_sum(n * G), part_max(n * window * G), part_sum(n * window * G);
  FloatBuffer part_o(n * window * G * d.rkv);
  auto acc = [&](int64_t i) {
    const SplitToken& x = tokens[i];
    return Partial{o_latent + ((x.s->offset + x.t) * d.H + x.h0) * d.rkv, &acc_max[i * G], &acc_sum[i * G]};
  };
  auto part = [&](int64_t i, int64_t k) {
    const int64_t slot = i * window + k;
    return Partial{&part_o[slot * G * d.rkv], &part_max[slot * G], &part_sum[slot * G]};
  };
  std::vector<RowQuery> query(n);  // each (token, head group)'s, for all its segments
#pragma omp parallel for schedule(static) num_threads(threads) if (n > 1)
  for (int64_t i = 0; i < n; ++i)
    query[i] = QueryOf(d, tokens[i].s->offset + tokens[i].t, tokens[i].h0, tokens[i].h1, q_latent, q, cache);
  for (int64_t k0 = 0; k0 < most; k0 += window) {
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (int64_t item = 0; item < n * window; ++item) {
      const int64_t i = item % n, k = k0 + item / n;
      const SplitToken& x = tokens[i];
      if (k >= x.segments) continue;
      const int64_t visible = x.s->start_pos + x.t + 1, j0 = k * kSegmentRows;
      const int64_t j1 = std::min(visible, j0 + kSegmentRows);
      const Partial out = k == 0 ? acc(i) : part(i, k - k0);  // a token's first segment straight to its output
      AttendSegment(d, layer, *x.s, x.h1 - x.h0, j0, j1, query[i], cache, scale, out);
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
      const SplitToken& x = tokens[i];
      for (int64_t k = std::max<int64_t>(k0, 1); k < std::min(k0 + window, x.segments); ++k)
        FoldSegment(x.h1 - x.h0, d.rkv, acc(i), part(i, k - k0));
      if (k0 < x.segments && k0 + window >= x.segments) Normalise(x.h1 - x.h0, d.rkv, acc(i));  // once: its last window
    }
  }
}

// out[rows, h, :] = W_h · in[rows, h, :] for heads h < H: one batched product over the heads,
// each reading its rows in place and writing its outputs in place (a row's result is the same in
// any batch: kernels/linear.h).
void PerHeadLinear(const WeightView* w, int64_t H, const std::vector<int64_t>& rows, const float* in,
                   int64_t in_head_stride, int64_t in_row_stride, float* out, int64_t out_head_stride,
                   int64_t out_row_stride) {
  const int64_t n = static_cast<int64_t>(rows.size());
  std::vector<const float*> x(H * n);
  std::vector<float*> y(H * n);
  std::vector<LinearProblem> problems;
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t i = 0; i < n; ++i) {
      x[h * n + i] = in + rows[i] * in_row_stride + h * in_head_stride;
      y[h * n + i] = out + rows[i] * out_row_stride + h * out_head_stride;
    }
    problems.push_back({nullptr, n, w[h], nullptr, &x[h * n], &y[h * n]});
  }
  LinearBatch(problems.data(), H);
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
  float* q_latent = AtLeast(scratch_.q_latent, T * d.H * d.rkv).data();  // [T, H, rkv]
  float* o_latent = AtLeast(scratch_.o_latent, T * d.H * d.rkv).data();
  const int64_t n = static_cast<int64_t>(absorbed.size()), threads = omp_get_max_threads();
  if (n >= threads) {
    // As many sequences as threads or more: the per-head products batched over every row, the
    // attention one sequence per work item.
    PerHeadLinear(op.w->w_uk_t.data(), d.H, absorbed_rows, op.q, d.qk(), d.H * d.qk(), q_latent, d.rkv,
                  d.H * d.rkv);
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < n; ++i)
      AbsorbedSlice(d, op.layer, *absorbed[i], 0, d.H, q_latent, op.q, cache_, scale, o_latent);
    PerHeadLinear(op.w->w_uv.data(), d.H, absorbed_rows, o_latent, d.rkv, d.H * d.rkv, op.o, d.dv, d.H * d.dv);
    return absl::OkStatus();
  }
  // Fewer tokens than threads (a small decode batch) over more than one segment of keys: the
  // per-head products batched over every row, and the segments of every (token, head group)
  // spread over the threads.
  const int64_t rows = static_cast<int64_t>(absorbed_rows.size());
  int64_t segments = 0;
  for (const SequenceSlice* s : absorbed)
    for (int64_t t = 0; t < s->n_tokens; ++t) segments += Segments(s->start_pos + t + 1);
  if (rows < threads && segments > rows) {
    const int64_t groups = std::min<int64_t>(d.H, (threads + segments - 1) / segments);
    const int64_t per_group = (d.H + groups - 1) / groups;
    std::vector<SplitToken> tokens;
    for (const SequenceSlice* s : absorbed)
      for (int64_t t = 0; t < s->n_tokens; ++t)
        for (int64_t h0 = 0; h0 < d.H; h0 += per_group)
          tokens.push_back({s, t, h0, std::min(d.H, h0 + per_group), Segments(s->start_pos + t + 1)});
    PerHeadLinear(op.w->w_uk_t.data(), d.H, absorbed_rows, op.q, d.qk(), d.H * d.qk(), q_latent, d.rkv,
                  d.H * d.rkv);
    AbsorbedSplit(d, op.layer, tokens, q_latent, op.q, cache_, scale, o_latent,
                  static_cast<int>(threads));
    PerHeadLinear(op.w->w_uv.data(), d.H, absorbed_rows, o_latent, d.rkv, d.H * d.rkv, op.o, d.dv, d.H * d.dv);
    return absl::OkStatus();
  }
  // Otherwise (every token's keys in one segment, or as many tokens as threads): work items of
  // (sequence, head group), each reading the context once and projecting its own heads' queries
  // and outputs around its attention, in one parallel region (the per-head products inside it
  // run on the item's thread, to the same bits).
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
                  q_latent + h0 * d.rkv, d.rkv, d.H * d.rkv);
    AbsorbedSlice(d, op.layer, s, h0, h1, q_latent, op.q, cache_, scale, o_latent);
    PerHeadLinear(op.w->w_uv.data() + h0, h1 - h0, rows, o_latent + h0 * d.rkv, d.rkv, d.H * d.rkv,
                  op.o + h0 * d.dv, d.dv, d.H * d.dv);
  }
  return absl::OkStatus();
}

}  // namespace daedalus
