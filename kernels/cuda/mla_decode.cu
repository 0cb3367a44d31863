#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kv_row.cuh"
#include "kernels/cuda/mla_decode.h"

namespace daedalus::cuda {
namespace {

constexpr int kHeads = 16;    // heads per block
constexpr int kTile = 32;     // cached tokens per shared-memory tile
constexpr int kThreads = 256;

// Shared-memory row stride of a cached row in 32-bit words: odd, so that the 16 token rows
// one warp reads at the same column fall in distinct banks.
__host__ __device__ inline int RowWords(int64_t dim) { return static_cast<int>(dim / 2) | 1; }

size_t SharedBytes(int64_t rkv, int64_t dim, bool fp8) {
  return sizeof(float) * (kHeads * dim + kHeads * kTile + 4 * kHeads) + sizeof(uint32_t) * kTile * RowWords(dim) +
         (fp8 ? sizeof(float) * kTile * KvFp8Scales(rkv) : 0);
}

// DJ: output dimensions per thread (kv_lora_rank ≤ DJ · kThreads). kFp8: the rows' latent is
// kept in shared memory as its e4m3 codes widened to bf16 (exact) with the scales beside, and
// every product takes code · scale in float, as the CPU does.
template <int DJ, bool kFp8>
__global__ void __launch_bounds__(kThreads) MlaDecodeCudaCoresKernel(MlaDecodeParams p, int n_splits, int64_t split_len) {
  extern __shared__ float smem[];
  const int64_t rkv = p.kv_lora_rank, dim = rkv + p.rope_dim;
  const int row_words = RowWords(dim);
  float* q_s = smem;                          // [kHeads][dim]
  float* p_s = q_s + kHeads * dim;            // [kHeads][kTile] scores, then probabilities
  float* m_s = p_s + kHeads * kTile;          // [kHeads] running max
  float* l_s = m_s + kHeads;                  // [kHeads] running sum
  float* a_s = l_s + kHeads;                  // [kHeads] rescale of the accumulator this tile
  uint32_t* k_s = reinterpret_cast<uint32_t*>(a_s + 2 * kHeads);  // [kTile][row_words] bf16 pairs
  const int n_scales = kFp8 ? static_cast<int>(KvFp8Scales(rkv)) : 0;
  float* scale_s = reinterpret_cast<float*>(k_s + kTile * row_words);  // kFp8: [kTile][n_scales]
  const int64_t row_bytes = KvRowBytes(rkv, p.rope_dim, kFp8);

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t head0 = static_cast<int64_t>(blockIdx.z) * kHeads, row = blockIdx.x;
  const int split = blockIdx.y;
  const int heads_here = static_cast<int>(p.heads - head0 < kHeads ? p.heads - head0 : kHeads);
  const int64_t kv_len = p.kv_len[row];
  const int64_t begin = split * split_len, end = begin + split_len < kv_len ? begin + split_len : kv_len;

  for (int64_t i = tid; i < kHeads * dim; i += kThreads) {
    const int h = static_cast<int>(i / dim);
    const int64_t d = i % dim;
    float v = 0;
    if (h < heads_here) {
      v = d < rkv ? p.q_latent[(row * p.heads + head0 + h) * rkv + d]
                  : p.q_pe[row * p.q_pe_row_stride + (head0 + h) * p.q_pe_head_stride + (d - rkv)];
    }
    q_s[i] = v;
  }
  if (tid < kHeads) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0;
  }
  float acc[kHeads][DJ];
#pragma unroll
  for (int h = 0; h < kHeads; ++h)
#pragma unroll
    for (int j = 0; j < DJ; ++j) acc[h][j] = 0;

  const int words = static_cast<int>(dim / 2);
  const int32_t* pages = p.page_table + row * p.max_pages;
  for (int64_t t0 = begin; t0 < end; t0 += kTile) {
    __syncthreads();  // the previous tile's k_s and p_s are no longer read
    for (int i = tid; i < kTile * words; i += kThreads) {
      const int t = i / words, w = i % words;
      const int64_t pos = t0 + t;
      uint32_t v = 0;
      if (pos < end) {
        const uint8_t* src = KvRow(p.pool, pages[pos / p.page_size], p.n_layers, p.layer, p.page_size, pos % p.page_size, row_bytes);
        if (!kFp8) {
          v = __ldg(reinterpret_cast<const uint32_t*>(src) + w);
        } else if (2 * w < rkv) {  // two codes, widened to bf16
          v = static_cast<uint32_t>(ToBf16Bits(Fp8Value(src[2 * w]))) |
              static_cast<uint32_t>(ToBf16Bits(Fp8Value(src[2 * w + 1]))) << 16;
        } else {  // k_pe, 2-byte aligned
          const auto* pe = reinterpret_cast<const uint16_t*>(src + KvPeOffset(rkv)) + (2 * w - rkv);
          v = static_cast<uint32_t>(pe[0]) | static_cast<uint32_t>(pe[1]) << 16;
        }
      }
      k_s[t * row_words + w] = v;
    }
    if constexpr (kFp8) {
      for (int i = tid; i < kTile * n_scales; i += kThreads) {
        const int t = i / n_scales, b = i % n_scales;
        const int64_t pos = t0 + t;
        scale_s[i] = pos < end ? KvFp8Scale(KvRow(p.pool, pages[pos / p.page_size], p.n_layers, p.layer, p.page_size,
                                                  pos % p.page_size, row_bytes),
                                            rkv, b)
                               : 0.0f;
      }
    }
    __syncthreads();
    // Scores: thread (h, t) and (h, t + 16).
    {
      const int h = tid / 16, t = tid % 16;
      float s0 = 0, s1 = 0;
      const float2* q2 = reinterpret_cast<const float2*>(q_s + h * dim);
      const uint32_t* k0 = k_s + t * row_words;
      const uint32_t* k1 = k_s + (t + 16) * row_words;
      if (!kFp8) {
        for (int w = 0; w < words; ++w) {
          const float2 q = q2[w];
          const uint32_t a = k0[w], b = k1[w];
          s0 += q.x * __uint_as_float(a << 16) + q.y * __uint_as_float(a & 0xffff0000u);
          s1 += q.x * __uint_as_float(b << 16) + q.y * __uint_as_float(b & 0xffff0000u);
        }
      } else {
        // Scale block by block; the last "block" is k_pe, unscaled.
        for (int blk = 0; blk <= n_scales; ++blk) {
          const int w0 = blk < n_scales ? blk * kKvFp8Block / 2 : static_cast<int>(rkv / 2);
          const int w1 = blk < n_scales ? min((blk + 1) * kKvFp8Block / 2, static_cast<int>(rkv / 2)) : words;
          const float f0 = blk < n_scales ? scale_s[t * n_scales + blk] : 1.0f;
          const float f1 = blk < n_scales ? scale_s[(t + 16) * n_scales + blk] : 1.0f;
          for (int w = w0; w < w1; ++w) {
            const float2 q = q2[w];
            const uint32_t a = k0[w], b = k1[w];
            s0 += q.x * (__uint_as_float(a << 16) * f0) + q.y * (__uint_as_float(a & 0xffff0000u) * f0);
            s1 += q.x * (__uint_as_float(b << 16) * f1) + q.y * (__uint_as_float(b & 0xffff0000u) * f1);
          }
        }
      }
      p_s[h * kTile + t] = t0 + t < end ? s0 * p.scale : -INFINITY;
      p_s[h * kTile + t + 16] = t0 + t + 16 < end ? s1 * p.scale : -INFINITY;
    }
    __syncthreads();
    // Online softmax: one warp per two heads, one lane per token.
    for (int h = warp; h < kHeads; h += kThreads / 32) {
      const float s = p_s[h * kTile + lane];
      const float m_old = m_s[h], m_new = fmaxf(m_old, WarpMax(s));
      const float e = m_new == -INFINITY ? 0.0f : __expf(s - m_new);
      const float sum = WarpSum(e);
      p_s[h * kTile + lane] = e;
      if (lane == 0) {
        const float alpha = m_new == -INFINITY ? 1.0f : __expf(m_old - m_new);
        a_s[h] = alpha;
        l_s[h] = l_s[h] * alpha + sum;
        m_s[h] = m_new;
      }
    }
    __syncthreads();
    // o_latent[h][d] = o_latent[h][d] · alpha[h] + Σ_t p[h][t] · c_kv[t][d].
    const auto* k_bf = reinterpret_cast<const uint16_t*>(k_s);
#pragma unroll
    for (int h = 0; h < kHeads; ++h)
#pragma unroll
      for (int j = 0; j < DJ; ++j) acc[h][j] *= a_s[h];
    for (int t = 0; t < kTile; ++t) {
      float v[DJ];
#pragma unroll
      for (int j = 0; j < DJ; ++j) {
        const int64_t d = tid + j * kThreads;
        v[j] = d < rkv ? Bf16Bits(k_bf[t * 2 * row_words + d]) : 0.0f;
        if (kFp8 && d < rkv) v[j] *= scale_s[t * n_scales + d / kKvFp8Block];
      }
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        const float pr = p_s[h * kTile + t];
#pragma unroll
        for (int j = 0; j < DJ; ++j) acc[h][j] += pr * v[j];
      }
    }
  }
  __syncthreads();
  // Final (one split) or partial output with its (max, sum) per head.
  float* partial = static_cast<float*>(p.workspace);
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {  // unrolled, so that acc stays in registers
    if (h >= heads_here) break;
    const int64_t head = head0 + h;
#pragma unroll
    for (int j = 0; j < DJ; ++j) {
      const int64_t d = tid + j * kThreads;
      if (d >= rkv) continue;
      if (n_splits == 1) {
        p.out[(row * p.heads + head) * rkv + d] = acc[h][j] / l_s[h];
      } else {
        partial[((row * n_splits + split) * p.heads + head) * rkv + d] = acc[h][j];
      }
    }
    if (n_splits > 1 && tid == 0) {
      float* ml = partial + p.n_rows * n_splits * p.heads * rkv;
      ml[((row * n_splits + split) * p.heads + head) * 2] = m_s[h];
      ml[((row * n_splits + split) * p.heads + head) * 2 + 1] = l_s[h];
    }
  }
}

// out[row][h][d] = Σ_s acc_s · e^(m_s − M) / Σ_s l_s · e^(m_s − M).
__global__ void CombineKernel(MlaDecodeParams p, int n_splits) {
  const int64_t row = blockIdx.x, head = blockIdx.y, rkv = p.kv_lora_rank;
  const float* partial = static_cast<const float*>(p.workspace);
  const float* ml = partial + p.n_rows * n_splits * p.heads * rkv;
  float m = -INFINITY;
  for (int s = 0; s < n_splits; ++s) m = fmaxf(m, ml[((row * n_splits + s) * p.heads + head) * 2]);
  float l = 0;
  for (int s = 0; s < n_splits; ++s) {
    const float ms = ml[((row * n_splits + s) * p.heads + head) * 2];
    if (ms != -INFINITY) l += ml[((row * n_splits + s) * p.heads + head) * 2 + 1] * __expf(ms - m);
  }
  for (int64_t d = threadIdx.x; d < rkv; d += blockDim.x) {
    float o = 0;
    for (int s = 0; s < n_splits; ++s) {
      const float ms = ml[((row * n_splits + s) * p.heads + head) * 2];
      if (ms != -INFINITY) o += partial[((row * n_splits + s) * p.heads + head) * rkv + d] * __expf(ms - m);
    }
    p.out[(row * p.heads + head) * rkv + d] = o / l;
  }
}

template <int DJ, bool kFp8>
absl::Status LaunchAs(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream) {
  const size_t shared = SharedBytes(p.kv_lora_rank, p.kv_lora_rank + p.rope_dim, kFp8);
  DAEDALUS_CUDA_RETURN(cudaFuncSetAttribute(MlaDecodeCudaCoresKernel<DJ, kFp8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(shared)));
  // Rows on x, which allows 2^31 - 1 blocks (y and z stop at 65,535).
  const dim3 grid(static_cast<unsigned>(p.n_rows), plan.n_splits, CeilDiv(p.heads, kHeads));
  MlaDecodeCudaCoresKernel<DJ, kFp8><<<grid, kThreads, shared, stream>>>(p, plan.n_splits, plan.split_len);
  return DAEDALUS_CUDA_LAUNCH_STATUS("MlaDecode");
}
template <int DJ>
absl::Status Launch(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream) {
  return p.kv_fp8 ? LaunchAs<DJ, true>(p, plan, stream) : LaunchAs<DJ, false>(p, plan, stream);
}

}  // namespace

const char* MlaDecodeKernelName(MlaDecodeKernel k) {
  switch (k) {
    case MlaDecodeKernel::kCudaCores: return "CUDA cores";
    case MlaDecodeKernel::kWmma: return "WMMA";
    case MlaDecodeKernel::kMma: return "MMA";
  }
  return "?";
}

MlaDecodePlan PlanMlaDecode(int64_t n_rows, int64_t heads, int64_t kv_lora_rank, int64_t rope_dim, int64_t max_kv_len,
                            bool kv_fp8, int sm_count, MlaDecodeKernel best) {
  MlaDecodePlan plan;
  if (best >= MlaDecodeKernel::kMma && MlaDecodeFitsMma(heads, kv_lora_rank, rope_dim, kv_fp8)) {
    plan.kernel = MlaDecodeKernel::kMma;
    plan.heads_per_block = MlaDecodeMmaHeadsPerBlock(heads);
  } else if (best >= MlaDecodeKernel::kWmma && MlaDecodeFitsWmma(heads, kv_lora_rank, rope_dim, kv_fp8)) {
    plan.kernel = MlaDecodeKernel::kWmma;
    plan.heads_per_block = 32;
  }
  // Every kernel takes tiles of kTile (32) tokens.
  const int64_t blocks = n_rows * CeilDiv(heads, plan.heads_per_block), tiles = CeilDiv(max_kv_len, kTile);
  int64_t splits = 1;
  if (plan.kernel == MlaDecodeKernel::kMma) {
    // One block per multiprocessor: split only when the blocks leave a quarter of the device
    // idle, into enough parts to fill it, each of at least 4 tiles (every split writes and the
    // combine reads a partial output as large as a tile's rows).
    if (4 * blocks < 3 * static_cast<int64_t>(sm_count)) splits = std::min<int64_t>(CeilDiv(sm_count, blocks), tiles / 4);
  } else {
    splits = blocks >= 2 * sm_count ? 1 : CeilDiv(2 * sm_count, blocks);
  }
  splits = splits < tiles ? splits : tiles;
  splits = splits < 1 ? 1 : splits;
  plan.split_len = static_cast<int64_t>(CeilDiv(tiles, splits)) * kTile;
  plan.n_splits = CeilDiv(max_kv_len, plan.split_len);
  if (plan.n_splits < 1) plan.n_splits = 1;
  if (plan.n_splits > 1) {
    plan.workspace_bytes = sizeof(float) * static_cast<size_t>(n_rows * plan.n_splits * heads * (kv_lora_rank + 2));
  }
  return plan;
}

absl::Status MlaDecode(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream) {
  if (p.n_rows == 0) return absl::OkStatus();
  if (p.kv_lora_rank % 2 != 0 || p.rope_dim % 2 != 0 || p.kv_lora_rank > 4 * kThreads) {
    return absl::InvalidArgumentError("MlaDecode: kv_lora_rank and rope_dim must be even, kv_lora_rank at most 1024");
  }
  if (plan.n_splits > 1 && p.workspace == nullptr) return absl::InvalidArgumentError("MlaDecode: no workspace for the splits");
  absl::Status s = plan.kernel == MlaDecodeKernel::kMma    ? MlaDecodeMma(p, plan, stream)
                   : plan.kernel == MlaDecodeKernel::kWmma ? MlaDecodeWmma(p, plan, stream)
                   : p.kv_lora_rank <= kThreads            ? Launch<1>(p, plan, stream)
                   : p.kv_lora_rank <= 2 * kThreads        ? Launch<2>(p, plan, stream)
                                                           : Launch<4>(p, plan, stream);
  if (!s.ok() || plan.n_splits == 1) return s;
  return MlaDecodeCombine(p, plan, stream);
}

absl::Status MlaDecodeCombine(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream) {
  CombineKernel<<<dim3(static_cast<unsigned>(p.n_rows), static_cast<unsigned>(p.heads)), 128, 0, stream>>>(p, plan.n_splits);
  return DAEDALUS_CUDA_LAUNCH_STATUS("MlaDecode combine");
}

}  // namespace daedalus::cuda
