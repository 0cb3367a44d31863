// The WMMA form of MlaDecode (see mla_decode.h; bf16 rows): per block 32 heads of one row and one
// KV split. Per tile of 32 cached tokens (double-buffered, loaded with cp.async):
//   S[32 heads, 32 tokens] = Q[32, dim] · K[32, dim]ᵀ   (bf16 WMMA, float accumulation; the
//                                                       dim sum is split over two warp sets)
//   online softmax per head row (float), P rounded to bf16
//   O[32, rkv] = O · diag(alpha) + P · V               (V = the tile's first rkv columns)
// O lives in registers as WMMA accumulator fragments; the per-row rescale reads each fragment
// element's row from a fragment loaded from a row-index matrix, so no fragment layout is
// assumed.
#include <cuda_pipeline.h>
#include <mma.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/mla_decode.h"

namespace daedalus::cuda {
namespace {

using namespace nvcuda;

constexpr int kHeads = 32, kTile = 32, kThreads = 256, kWarps = kThreads / 32;
constexpr int kPad = 8;          // bf16 elements of padding per q/k row (keeps 32-byte alignment)
constexpr int kScoreLd = kTile + 4, kProbLd = kTile + 8;

struct Layout {
  int ld;            // q/k row stride (bf16 elements)
  size_t q, k, s, prob, rowid, stats, total;  // byte offsets
};
__host__ __device__ inline Layout MakeLayout(int64_t dim) {
  Layout l;
  l.ld = static_cast<int>(dim) + kPad;
  l.q = 0;
  l.k = l.q + sizeof(uint16_t) * kHeads * l.ld;
  l.s = l.k + sizeof(uint16_t) * 2 * kTile * l.ld;
  l.prob = l.s + sizeof(float) * 2 * kHeads * kScoreLd;
  l.rowid = l.prob + sizeof(uint16_t) * kHeads * kProbLd;
  l.stats = l.rowid + sizeof(float) * 16 * 16;
  l.total = l.stats + sizeof(float) * 3 * kHeads;
  return l;
}

// CB: 16-column blocks of the output per warp (kv_lora_rank = CB · 16 · kWarps).
template <int CB>
__global__ void __launch_bounds__(kThreads, 1) MlaDecodeTcKernel(MlaDecodeParams p, int n_splits, int64_t split_len) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int64_t rkv = p.kv_lora_rank, dim = rkv + p.rope_dim;
  const Layout L = MakeLayout(dim);
  const int ld = L.ld;
  auto* q_s = reinterpret_cast<__nv_bfloat16*>(smem + L.q);      // [32 heads][ld]
  auto* k_s = reinterpret_cast<__nv_bfloat16*>(smem + L.k);      // [2][32 tokens][ld]
  auto* s_s = reinterpret_cast<float*>(smem + L.s);              // [2 halves][32][kScoreLd]
  auto* p_s = reinterpret_cast<__nv_bfloat16*>(smem + L.prob);   // [32][kProbLd]
  auto* rowid_s = reinterpret_cast<float*>(smem + L.rowid);      // [16][16]: r
  float* m_s = reinterpret_cast<float*>(smem + L.stats);
  float* l_s = m_s + kHeads;
  float* a_s = l_s + kHeads;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t head0 = static_cast<int64_t>(blockIdx.z) * kHeads, row = blockIdx.x;
  const int split = blockIdx.y;
  const int64_t kv_len = p.kv_len[row];
  const int64_t begin = split * split_len, end = begin + split_len < kv_len ? begin + split_len : kv_len;
  const int n_tiles = end > begin ? static_cast<int>((end - begin + kTile - 1) / kTile) : 0;
  const int32_t* pages = p.page_table + row * p.max_pages;
  const int chunks = static_cast<int>(dim / 8);  // 16-byte pieces of a cached row

  auto load_tile = [&](int tile, int buf) {
    const int64_t t0 = begin + static_cast<int64_t>(tile) * kTile;
    __nv_bfloat16* dst0 = k_s + buf * kTile * ld;
    for (int i = tid; i < kTile * chunks; i += kThreads) {
      const int t = i / chunks, c = i % chunks;
      const int64_t pos = t0 + t;
      __nv_bfloat16* dst = dst0 + t * ld + c * 8;
      if (pos < end) {
        const int64_t page = pages[pos / p.page_size], slot = pos % p.page_size;
        const uint16_t* src = static_cast<const uint16_t*>(p.pool) + ((page * p.n_layers + p.layer) * p.page_size + slot) * dim + c * 8;
        __pipeline_memcpy_async(dst, src, 16);
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);  // masked below; zeros keep P·V finite
      }
    }
    __pipeline_commit();
  };
  if (n_tiles > 0) load_tile(0, 0);

  for (int64_t i = tid; i < kHeads * dim; i += kThreads) {
    const int h = static_cast<int>(i / dim);
    const int64_t d = i % dim;
    const float v = d < rkv ? p.q_latent[(row * p.heads + head0 + h) * rkv + d]
                            : p.q_pe[row * p.q_pe_row_stride + (head0 + h) * p.q_pe_head_stride + (d - rkv)];
    q_s[h * ld + d] = __float2bfloat16_rn(v);
  }
  rowid_s[tid] = static_cast<float>(tid / 16);  // kThreads == 256 == 16 · 16
  if (tid < kHeads) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0;
  }
  __syncthreads();

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> rowid;
  wmma::load_matrix_sync(rowid, rowid_s, 16, wmma::mem_row_major);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][CB];
#pragma unroll
  for (int hh = 0; hh < 2; ++hh)
#pragma unroll
    for (int c = 0; c < CB; ++c) wmma::fill_fragment(acc[hh][c], 0.0f);

  const int k_steps = static_cast<int>(dim / 32);  // 16-wide steps per half of the dim sum
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int buf = tile & 1;
    if (tile + 1 < n_tiles) {
      load_tile(tile + 1, buf ^ 1);
      __pipeline_wait_prior(1);
    } else {
      __pipeline_wait_prior(0);
    }
    __syncthreads();
    const __nv_bfloat16* kt = k_s + buf * kTile * ld;
    {  // Scores: warp → (head half, token half, dim half).
      const int f = warp % 4, half = warp / 4, hh = f / 2, tt = f % 2;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
      wmma::fill_fragment(s, 0.0f);
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
      for (int ks = half * k_steps; ks < (half + 1) * k_steps; ++ks) {
        wmma::load_matrix_sync(a, q_s + hh * 16 * ld + ks * 16, ld);
        wmma::load_matrix_sync(b, kt + tt * 16 * ld + ks * 16, ld);
        wmma::mma_sync(s, a, b, s);
      }
      wmma::store_matrix_sync(s_s + half * kHeads * kScoreLd + hh * 16 * kScoreLd + tt * 16, s, kScoreLd,
                              wmma::mem_row_major);
    }
    __syncthreads();
    {  // Online softmax: 4 heads per warp, one token per lane.
      const int64_t pos = begin + static_cast<int64_t>(tile) * kTile + lane;
      for (int j = 0; j < kHeads / kWarps; ++j) {
        const int h = warp * (kHeads / kWarps) + j;
        const float raw = s_s[h * kScoreLd + lane] + s_s[kHeads * kScoreLd + h * kScoreLd + lane];
        const float sc = pos < end ? raw * p.scale : -INFINITY;
        const float m_old = m_s[h], m_new = fmaxf(m_old, WarpMax(sc));
        const float e = m_new == -INFINITY ? 0.0f : __expf(sc - m_new);
        const float sum = WarpSum(e);
        p_s[h * kProbLd + lane] = __float2bfloat16_rn(e);
        if (lane == 0) {
          const float alpha = m_new == -INFINITY ? 1.0f : __expf(m_old - m_new);
          a_s[h] = alpha;
          l_s[h] = l_s[h] * alpha + sum;
          m_s[h] = m_new;
        }
      }
    }
    __syncthreads();
    // O = O · diag(alpha) + P · V; warp → output columns [warp·CB·16, (warp+1)·CB·16).
#pragma unroll
    for (int hh = 0; hh < 2; ++hh)
#pragma unroll
      for (int c = 0; c < CB; ++c)
#pragma unroll
        for (int i = 0; i < acc[hh][c].num_elements; ++i) acc[hh][c].x[i] *= a_s[hh * 16 + static_cast<int>(rowid.x[i])];
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> pa[2];
      wmma::load_matrix_sync(pa[0], p_s + kk * 16, kProbLd);
      wmma::load_matrix_sync(pa[1], p_s + 16 * kProbLd + kk * 16, kProbLd);
#pragma unroll
      for (int c = 0; c < CB; ++c) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> v;
        wmma::load_matrix_sync(v, kt + kk * 16 * ld + (warp * CB + c) * 16, ld);
        wmma::mma_sync(acc[0][c], pa[0], v, acc[0][c]);
        wmma::mma_sync(acc[1][c], pa[1], v, acc[1][c]);
      }
    }
    __syncthreads();  // the next iteration loads into the buffer read here
  }

  // O through shared memory (the K buffers' space) to global, divided by l or as a partial.
  float* o_s = reinterpret_cast<float*>(smem + L.k);
  const int ldo = static_cast<int>(rkv) + 4;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh)
#pragma unroll
    for (int c = 0; c < CB; ++c)
      wmma::store_matrix_sync(o_s + hh * 16 * ldo + (warp * CB + c) * 16, acc[hh][c], ldo, wmma::mem_row_major);
  __syncthreads();
  float* partial = static_cast<float*>(p.workspace);
  for (int64_t i = tid; i < kHeads * rkv; i += kThreads) {
    const int h = static_cast<int>(i / rkv);
    const int64_t d = i % rkv, head = head0 + h;
    const float o = o_s[h * ldo + d];
    if (n_splits == 1) p.out[(row * p.heads + head) * rkv + d] = o / l_s[h];
    else partial[((row * n_splits + split) * p.heads + head) * rkv + d] = o;
  }
  if (n_splits > 1 && tid < kHeads) {
    float* ml = partial + p.n_rows * n_splits * p.heads * rkv;
    ml[((row * n_splits + split) * p.heads + head0 + tid) * 2] = m_s[tid];
    ml[((row * n_splits + split) * p.heads + head0 + tid) * 2 + 1] = l_s[tid];
  }
}

template <int CB>
absl::Status Launch(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream) {
  const size_t shared = MakeLayout(p.kv_lora_rank + p.rope_dim).total;
  DAEDALUS_CUDA_RETURN(cudaFuncSetAttribute(MlaDecodeTcKernel<CB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(shared)));
  // Rows on x, which allows 2^31 - 1 blocks (y and z stop at 65,535).
  const dim3 grid(static_cast<unsigned>(p.n_rows), plan.n_splits, static_cast<unsigned>(p.heads / kHeads));
  MlaDecodeTcKernel<CB><<<grid, kThreads, shared, stream>>>(p, plan.n_splits, plan.split_len);
  return DAEDALUS_CUDA_LAUNCH_STATUS("MlaDecode (WMMA)");
}

}  // namespace

bool MlaDecodeFitsWmma(int64_t heads, int64_t kv_lora_rank, int64_t rope_dim, bool kv_fp8) {
  return !kv_fp8 && heads % kHeads == 0 && (kv_lora_rank == 128 || kv_lora_rank == 256 || kv_lora_rank == 512) &&
         (kv_lora_rank + rope_dim) % 32 == 0 && MakeLayout(kv_lora_rank + rope_dim).total <= static_cast<size_t>(MaxSharedBytesPerBlock());
}

absl::Status MlaDecodeWmma(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream) {
  if (!MlaDecodeFitsWmma(p.heads, p.kv_lora_rank, p.rope_dim, p.kv_fp8)) {
    return absl::InvalidArgumentError("MlaDecode: shapes or cache dtype do not fit the WMMA kernel");
  }
  switch (p.kv_lora_rank) {
    case 128: return Launch<1>(p, plan, stream);
    case 256: return Launch<2>(p, plan, stream);
    default: return Launch<4>(p, plan, stream);
  }
}

}  // namespace daedalus::cuda
