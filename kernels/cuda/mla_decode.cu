#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/mla_decode.h"

namespace daedalus::cuda {
namespace {

constexpr int kHeads = 16;    // heads per block
constexpr int kTile = 32;     // cached tokens per shared-memory tile
constexpr int kThreads = 256;

// Shared-memory row stride of a cached row in 32-bit words: odd, so that the 16 token rows
// one warp reads at the same column fall in distinct banks.
__host__ __device__ inline int RowWords(int64_t dim) { return static_cast<int>(dim / 2) | 1; }

size_t SharedBytes(int64_t dim) {
  return sizeof(float) * (kHeads * dim + kHeads * kTile + 4 * kHeads) + sizeof(uint32_t) * kTile * RowWords(dim);
}

// DJ: output dimensions per thread (kv_lora_rank ≤ DJ · kThreads).
template <int DJ>
__global__ void __launch_bounds__(kThreads) MlaDecodeKernel(MlaDecodeParams p, int n_splits, int64_t split_len) {
  extern __shared__ float smem[];
  const int64_t rkv = p.kv_lora_rank, dim = rkv + p.rope_dim;
  const int row_words = RowWords(dim);
  float* q_s = smem;                          // [kHeads][dim]
  float* p_s = q_s + kHeads * dim;            // [kHeads][kTile] scores, then probabilities
  float* m_s = p_s + kHeads * kTile;          // [kHeads] running max
  float* l_s = m_s + kHeads;                  // [kHeads] running sum
  float* a_s = l_s + kHeads;                  // [kHeads] rescale of the accumulator this tile
  uint32_t* k_s = reinterpret_cast<uint32_t*>(a_s + 2 * kHeads);  // [kTile][row_words] bf16 pairs

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
        const int64_t page = pages[pos / p.page_size], slot = pos % p.page_size;
        const auto* src = reinterpret_cast<const uint32_t*>(p.pool + ((page * p.n_layers + p.layer) * p.page_size + slot) * dim);
        v = __ldg(src + w);
      }
      k_s[t * row_words + w] = v;
    }
    __syncthreads();
    // Scores: thread (h, t) and (h, t + 16).
    {
      const int h = tid / 16, t = tid % 16;
      float s0 = 0, s1 = 0;
      const float2* q2 = reinterpret_cast<const float2*>(q_s + h * dim);
      const uint32_t* k0 = k_s + t * row_words;
      const uint32_t* k1 = k_s + (t + 16) * row_words;
      for (int w = 0; w < words; ++w) {
        const float2 q = q2[w];
        const uint32_t a = k0[w], b = k1[w];
        s0 += q.x * __uint_as_float(a << 16) + q.y * __uint_as_float(a & 0xffff0000u);
        s1 += q.x * __uint_as_float(b << 16) + q.y * __uint_as_float(b & 0xffff0000u);
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

template <int DJ>
absl::Status Launch(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream) {
  const size_t shared = SharedBytes(p.kv_lora_rank + p.rope_dim);
  DAEDALUS_CUDA_RETURN(cudaFuncSetAttribute(MlaDecodeKernel<DJ>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(shared)));
  // Rows on x, which allows 2^31 - 1 blocks (y and z stop at 65,535).
  const dim3 grid(static_cast<unsigned>(p.n_rows), plan.n_splits, CeilDiv(p.heads, kHeads));
  MlaDecodeKernel<DJ><<<grid, kThreads, shared, stream>>>(p, plan.n_splits, plan.split_len);
  return DAEDALUS_CUDA_LAUNCH_STATUS("MlaDecode");
}

}  // namespace

MlaDecodePlan PlanMlaDecode(int64_t n_rows, int64_t heads, int64_t kv_lora_rank, int64_t rope_dim, int64_t max_kv_len,
                            int sm_count, bool allow_tensor_cores) {
  MlaDecodePlan plan;
  plan.tensor_cores = allow_tensor_cores && MlaDecodeFitsTensorCores(heads, kv_lora_rank, rope_dim);
  plan.heads_per_block = plan.tensor_cores ? 32 : kHeads;
  // Both kernels take tiles of kTile (32) tokens; the tensor-core kernel fits one block per SM.
  const int64_t blocks = n_rows * CeilDiv(heads, plan.heads_per_block), tiles = CeilDiv(max_kv_len, kTile);
  int64_t splits = blocks >= 2 * sm_count ? 1 : CeilDiv(2 * sm_count, blocks);
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
  absl::Status s = plan.tensor_cores                ? MlaDecodeTensorCores(p, plan, stream)
                   : p.kv_lora_rank <= kThreads     ? Launch<1>(p, plan, stream)
                   : p.kv_lora_rank <= 2 * kThreads ? Launch<2>(p, plan, stream)
                                                    : Launch<4>(p, plan, stream);
  if (!s.ok() || plan.n_splits == 1) return s;
  return MlaDecodeCombine(p, plan, stream);
}

absl::Status MlaDecodeCombine(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream) {
  CombineKernel<<<dim3(static_cast<unsigned>(p.n_rows), static_cast<unsigned>(p.heads)), 128, 0, stream>>>(p, plan.n_splits);
  return DAEDALUS_CUDA_LAUNCH_STATUS("MlaDecode combine");
}

}  // namespace daedalus::cuda
