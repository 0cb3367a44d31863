// The MMA form of MlaDecode (see mla_decode.h): FlashMLA's structure on mma.sync (sm_80 and
// later). A block takes 16·SLABS heads of one row and one KV split, with 2·SLABS warps; warp w
// takes the 16 heads of slab w % SLABS and half h = w / SLABS of the work:
//   scores: S[16 heads, 32 tokens] over half h of the q·k dims (m16n8k16 bf16 MMAs with float
//           accumulation); the partner warp (same slab, other half) adds the other half through
//           shared memory, so both hold the same scores and run the same online softmax in
//           registers (float, per head row: running max m and sum l);
//   output: O[16 heads, kv_lora_rank / 2] for half h of the output columns, in registers,
//           O = O · diag(alpha) + P · V with P (bf16) taken straight from the score registers.
// Tiles of 32 cached tokens in a three-stage cp.async pipeline (two tiles in flight while one
// is computed).
// FP8 rows are staged as bytes and widened in shared memory to bf16 as code · scale, rounded
// (FlashMLA's FP8 path does the same); bf16 rows are copied in place.
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_pipeline.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kv_row.cuh"
#include "kernels/cuda/mla_decode.h"

namespace daedalus::cuda {
namespace {

constexpr int kTile = 32;       // cached tokens per tile
constexpr int kStages = 3;      // tiles in shared memory: one computed, two loading
constexpr int kScoreTiles = kTile / 8;
constexpr int kPad = 8;         // bf16 per q/k row of padding: rows 16 bytes apart in the banks
constexpr int kExchange = kScoreTiles * 4 * 32;  // floats of one warp's partial scores

__host__ __device__ constexpr size_t Align128(size_t n) { return (n + 127) / 128 * 128; }

struct Layout {
  int ld;  // q and k row stride, bf16
  size_t q, k, stage, exchange, total;
};
__host__ __device__ inline Layout MakeLayout(int slabs, bool fp8, int64_t dim, int64_t row_bytes) {
  Layout l;
  l.ld = static_cast<int>(dim) + kPad;
  l.q = 0;
  l.k = Align128(l.q + sizeof(uint16_t) * 16 * slabs * l.ld);
  l.stage = Align128(l.k + sizeof(uint16_t) * (fp8 ? 1 : kStages) * kTile * l.ld);
  l.exchange = Align128(l.stage + (fp8 ? kStages * kTile * static_cast<size_t>(row_bytes) : 0));
  l.total = l.exchange + sizeof(float) * 2 * slabs * kExchange;
  return l;
}

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void LoadMatrix(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
__device__ __forceinline__ void LoadMatrixTransposed(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
// c[16×8] += a[16×16] · b[16×8] (bf16 in, float accumulate).
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  return static_cast<uint32_t>(ToBf16Bits(lo)) | static_cast<uint32_t>(ToBf16Bits(hi)) << 16;
}
// Two e4m3 codes (low byte first) times `scale`, as two bf16.
__device__ __forceinline__ uint32_t WidenFp8Pair(uint16_t codes, float scale) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(codes), __NV_E4M3);
  const float2 f = __half22float2(__half2(h));
  return PackBf16(f.x * scale, f.y * scale);
}
__device__ __forceinline__ void PairBarrier(int id) { asm volatile("bar.sync %0, 64;\n" ::"r"(id)); }

template <int RKV, int SLABS, bool kFp8>
__global__ void __launch_bounds__(64 * SLABS, 1) MlaDecodeMmaKernel(MlaDecodeParams p, int n_splits, int64_t split_len) {
  constexpr int kWarps = 2 * SLABS, kThreads = 32 * kWarps, kHeads = 16 * SLABS;
  constexpr int kOutTiles = RKV / 2 / 8;  // 8-column output tiles per warp
  extern __shared__ __align__(128) unsigned char smem[];
  const int64_t dim = RKV + p.rope_dim, row_bytes = KvRowBytes(RKV, p.rope_dim, kFp8);
  const Layout L = MakeLayout(SLABS, kFp8, dim, row_bytes);
  const int ld = L.ld;
  auto* q_s = reinterpret_cast<__nv_bfloat16*>(smem + L.q);      // [kHeads][ld]
  auto* k_s = reinterpret_cast<__nv_bfloat16*>(smem + L.k);      // [kFp8 ? 1 : kStages][kTile][ld]
  uint8_t* stage = smem + L.stage;                               // kFp8: [kStages][kTile][row_bytes]
  float* exchange = reinterpret_cast<float*>(smem + L.exchange);  // [kWarps][kExchange]

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, slab = warp % SLABS, half = warp / SLABS;
  const int quad = lane % 4;
  const int64_t head0 = static_cast<int64_t>(blockIdx.z) * kHeads, row = blockIdx.x;
  const int split = blockIdx.y;
  const int64_t kv_len = p.kv_len[row];
  const int64_t begin = split * split_len, end = begin + split_len < kv_len ? begin + split_len : kv_len;
  const int n_tiles = end > begin ? static_cast<int>((end - begin + kTile - 1) / kTile) : 0;
  const int32_t* pages = p.page_table + row * p.max_pages;

  // Loads go row by row: kThreads / kTile threads per cached row, so each thread finds its
  // row's page once per tile (32-bit arithmetic; kv_len is int32).
  constexpr int kRowThreads = kThreads / kTile;
  const int my_row = tid / kRowThreads, my_part = tid % kRowThreads;
  auto row_at = [&](int64_t t0) -> const uint8_t* {  // this thread's cached row of the tile at t0
    const int pos = static_cast<int>(t0) + my_row, page_size = static_cast<int>(p.page_size);
    const int page = pages[pos / page_size], slot = pos % page_size;
    return static_cast<const uint8_t*>(p.pool) +
           ((static_cast<int64_t>(page) * p.n_layers + p.layer) * p.page_size + slot) * row_bytes;
  };
  auto issue = [&](int tile) {  // cp.async of the tile's rows (bf16: into k_s; FP8: the stage), one group
    if (tile >= n_tiles) {
      __pipeline_commit();  // an empty group keeps the count of groups per tile
      return;
    }
    const int64_t t0 = begin + static_cast<int64_t>(tile) * kTile;
    const int buf = tile % kStages;
    const bool valid = t0 + my_row < end;
    const uint8_t* src = valid ? row_at(t0) : nullptr;
    if constexpr (!kFp8) {
      __nv_bfloat16* dst = k_s + (buf * kTile + my_row) * ld;
      for (int c = my_part; c < static_cast<int>(dim / 8); c += kRowThreads) {
        if (valid) __pipeline_memcpy_async(dst + c * 8, src + c * 16, 16);
        else *reinterpret_cast<uint4*>(dst + c * 8) = make_uint4(0, 0, 0, 0);  // masked; zeros keep P·V finite
      }
    } else if (valid) {
      uint8_t* dst = stage + (buf * kTile + my_row) * row_bytes;
      for (int c = my_part; c < static_cast<int>(row_bytes / 8); c += kRowThreads) __pipeline_memcpy_async(dst + c * 8, src + c * 8, 8);
    }
    __pipeline_commit();
  };
  // FP8: the staged tile widened into k_s (8 values per step); rows past the end as zeros.
  auto widen = [&](int tile) {
    const int64_t t0 = begin + static_cast<int64_t>(tile) * kTile;
    const uint8_t* r = stage + ((tile % kStages) * kTile + my_row) * row_bytes;
    const bool valid = t0 + my_row < end;
    for (int d0 = my_part * 8; d0 < dim; d0 += kRowThreads * 8) {
      uint4 v = make_uint4(0, 0, 0, 0);
      if (valid && d0 < RKV) {
        const uint2 codes = *reinterpret_cast<const uint2*>(r + d0);
        const float scale = *reinterpret_cast<const float*>(r + RKV + 4 * (d0 / kKvFp8Block));
        v = make_uint4(WidenFp8Pair(static_cast<uint16_t>(codes.x), scale), WidenFp8Pair(static_cast<uint16_t>(codes.x >> 16), scale),
                       WidenFp8Pair(static_cast<uint16_t>(codes.y), scale), WidenFp8Pair(static_cast<uint16_t>(codes.y >> 16), scale));
      } else if (valid) {
        const auto* pe = reinterpret_cast<const uint2*>(r + KvPeOffset(RKV) + 2 * (d0 - RKV));
        const uint2 a = pe[0], b = pe[1];
        v = make_uint4(a.x, a.y, b.x, b.y);
      }
      *reinterpret_cast<uint4*>(k_s + my_row * ld + d0) = v;
    }
  };
  issue(0);
  issue(1);

  for (int h = warp; h < kHeads; h += kWarps) {
    const int64_t head = head0 + h;
    const float* q_lat = p.q_latent + (row * p.heads + head) * RKV;
    const float* q_pe = p.q_pe + row * p.q_pe_row_stride + head * p.q_pe_head_stride;
    for (int d = lane; d < dim; d += 32) {
      const float v = head >= p.heads ? 0.0f : d < RKV ? q_lat[d] : q_pe[d - RKV];
      q_s[h * ld + d] = __float2bfloat16_rn(v);
    }
  }

  float o[kOutTiles][4];
#pragma unroll
  for (int j = 0; j < kOutTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;  // head rows lane/4 and lane/4 + 8

  // ldmatrix row addresses (see the PTX fragment layouts): A (q) rows by lane % 16, column
  // block by lane / 16; B (k, for the scores) token by lane % 8 + 8·(lane / 16), column block by
  // (lane / 8) % 2; B (v, transposed) token by lane % 8 + 8·((lane / 8) % 2), column block by
  // lane / 16.
  const int k_steps = static_cast<int>(dim / 32), k_begin = half * static_cast<int>(dim / 2);
  const uint32_t q_address = SharedAddress(q_s + (slab * 16 + lane % 16) * ld + (lane / 16) * 8 + k_begin);
  float* mine = exchange + warp * kExchange;
  const float* partner = exchange + ((1 - half) * SLABS + slab) * kExchange;

  for (int tile = 0; tile < n_tiles; ++tile) {
    __pipeline_wait_prior(1);
    __syncthreads();  // the tile is in; every warp is done with the buffers the next load takes
    issue(tile + 2);
    if constexpr (kFp8) {
      widen(tile);
      __syncthreads();
    }
    const __nv_bfloat16* kt = k_s + (kFp8 ? 0 : tile % kStages) * kTile * ld;
    const uint32_t k_address = SharedAddress(kt + (lane % 8 + 8 * (lane / 16)) * ld + ((lane / 8) % 2) * 8 + k_begin);
    const uint32_t v_address = SharedAddress(kt + (lane % 8 + 8 * ((lane / 8) % 2)) * ld + (lane / 16) * 8 + half * (RKV / 2));

    // Even and odd k-steps into two accumulator sets: twice the independent MMA chains.
    float s[kScoreTiles][4], s_odd[kScoreTiles][4];
#pragma unroll
    for (int j = 0; j < kScoreTiles; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) s[j][r] = s_odd[j][r] = 0.0f;
    auto k_step = [&](int ks, float(&acc)[kScoreTiles][4]) {
      uint32_t a[4];
      LoadMatrix(a, q_address + ks * 32);
#pragma unroll
      for (int j = 0; j < kScoreTiles; j += 2) {
        uint32_t b[4];
        LoadMatrix(b, k_address + (j * 8 * ld + ks * 16) * 2);
        Mma(acc[j], a, b[0], b[1]);
        Mma(acc[j + 1], a, b[2], b[3]);
      }
    };
    int ks = 0;
    for (; ks + 1 < k_steps; ks += 2) {
      k_step(ks, s);
      k_step(ks + 1, s_odd);
    }
    if (ks < k_steps) k_step(ks, s);
#pragma unroll
    for (int j = 0; j < kScoreTiles; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) s[j][r] += s_odd[j][r];
    // The partner's half of the dim sum (float addition commutes: both warps hold the same).
#pragma unroll
    for (int j = 0; j < kScoreTiles; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) mine[(j * 4 + r) * 32 + lane] = s[j][r];
    PairBarrier(1 + slab);
    const int64_t t0 = begin + static_cast<int64_t>(tile) * kTile;
    float max_lo = -INFINITY, max_hi = -INFINITY;
#pragma unroll
    for (int j = 0; j < kScoreTiles; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float v = s[j][r] + partner[(j * 4 + r) * 32 + lane];
        const bool valid = t0 + j * 8 + 2 * quad + (r & 1) < end;
        s[j][r] = valid ? v * p.scale : -INFINITY;
        if (r < 2) max_lo = fmaxf(max_lo, s[j][r]);
        else max_hi = fmaxf(max_hi, s[j][r]);
      }
#pragma unroll
    for (int o_ = 1; o_ < 4; o_ <<= 1) {
      max_lo = fmaxf(max_lo, __shfl_xor_sync(0xffffffffu, max_lo, o_));
      max_hi = fmaxf(max_hi, __shfl_xor_sync(0xffffffffu, max_hi, o_));
    }
    const float new_lo = fmaxf(m_lo, max_lo), new_hi = fmaxf(m_hi, max_hi);
    const float alpha_lo = new_lo == -INFINITY ? 1.0f : __expf(m_lo - new_lo);
    const float alpha_hi = new_hi == -INFINITY ? 1.0f : __expf(m_hi - new_hi);
    float sum_lo = 0, sum_hi = 0;
#pragma unroll
    for (int j = 0; j < kScoreTiles; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float m = r < 2 ? new_lo : new_hi;
        const float e = m == -INFINITY ? 0.0f : __expf(s[j][r] - m);
        s[j][r] = e;
        if (r < 2) sum_lo += e;
        else sum_hi += e;
      }
#pragma unroll
    for (int o_ = 1; o_ < 4; o_ <<= 1) {
      sum_lo += __shfl_xor_sync(0xffffffffu, sum_lo, o_);
      sum_hi += __shfl_xor_sync(0xffffffffu, sum_hi, o_);
    }
    l_lo = l_lo * alpha_lo + sum_lo, m_lo = new_lo;
    l_hi = l_hi * alpha_hi + sum_hi, m_hi = new_hi;
#pragma unroll
    for (int j = 0; j < kOutTiles; ++j) {
      o[j][0] *= alpha_lo, o[j][1] *= alpha_lo;
      o[j][2] *= alpha_hi, o[j][3] *= alpha_hi;
    }
    // O += P · V: the score accumulators of tokens [16kk, 16kk + 16) are P's A fragment.
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      const uint32_t pa[4] = {PackBf16(s[2 * kk][0], s[2 * kk][1]), PackBf16(s[2 * kk][2], s[2 * kk][3]),
                              PackBf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), PackBf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int j = 0; j < kOutTiles; j += 2) {
        uint32_t b[4];
        LoadMatrixTransposed(b, v_address + (kk * 16 * ld + j * 8) * 2);
        Mma(o[j], pa, b[0], b[1]);
        Mma(o[j + 1], pa, b[2], b[3]);
      }
    }
  }

  // Final (one split) or partial output with its (max, sum) per head.
  float* partial = static_cast<float*>(p.workspace);
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int64_t head = head0 + slab * 16 + lane / 4 + 8 * rr;
    if (head >= p.heads) continue;
    const float m = rr == 0 ? m_lo : m_hi, l = rr == 0 ? l_lo : l_hi;
    float* dst = n_splits == 1 ? p.out + (row * p.heads + head) * RKV
                               : partial + ((row * n_splits + split) * p.heads + head) * RKV;
#pragma unroll
    for (int j = 0; j < kOutTiles; ++j) {
      float2 v = make_float2(o[j][2 * rr], o[j][2 * rr + 1]);
      if (n_splits == 1) v.x /= l, v.y /= l;
      *reinterpret_cast<float2*>(dst + half * (RKV / 2) + j * 8 + 2 * quad) = v;
    }
    if (n_splits > 1 && half == 0 && quad == 0) {
      float* ml = partial + p.n_rows * n_splits * p.heads * RKV;
      ml[((row * n_splits + split) * p.heads + head) * 2] = m;
      ml[((row * n_splits + split) * p.heads + head) * 2 + 1] = l;
    }
  }
}

template <int RKV, int SLABS, bool kFp8>
absl::Status Launch(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream) {
  const int64_t dim = RKV + p.rope_dim;
  const size_t shared = MakeLayout(SLABS, kFp8, dim, KvRowBytes(RKV, p.rope_dim, kFp8)).total;
  DAEDALUS_CUDA_RETURN(cudaFuncSetAttribute(MlaDecodeMmaKernel<RKV, SLABS, kFp8>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
  // Rows on x, which allows 2^31 - 1 blocks (y and z stop at 65,535).
  const dim3 grid(static_cast<unsigned>(p.n_rows), plan.n_splits, CeilDiv(p.heads, 16 * SLABS));
  MlaDecodeMmaKernel<RKV, SLABS, kFp8><<<grid, 64 * SLABS, shared, stream>>>(p, plan.n_splits, plan.split_len);
  return DAEDALUS_CUDA_LAUNCH_STATUS("MlaDecode (MMA)");
}

template <int RKV>
absl::Status LaunchRank(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream) {
  if (plan.heads_per_block == 16) {
    return p.kv_fp8 ? Launch<RKV, 1, true>(p, plan, stream) : Launch<RKV, 1, false>(p, plan, stream);
  }
  return p.kv_fp8 ? Launch<RKV, 4, true>(p, plan, stream) : Launch<RKV, 4, false>(p, plan, stream);
}

}  // namespace

int MlaDecodeMmaHeadsPerBlock(int64_t heads) { return heads <= 16 ? 16 : 64; }

bool MlaDecodeFitsMma(int64_t heads, int64_t kv_lora_rank, int64_t rope_dim, bool kv_fp8) {
  if ((kv_lora_rank != 256 && kv_lora_rank != 512) || rope_dim % 32 != 0 || heads < 1) return false;
  const int64_t row_bytes = KvRowBytes(kv_lora_rank, rope_dim, kv_fp8);
  if (kv_fp8 && row_bytes % 8 != 0) return false;  // staged in 8-byte copies
  const int slabs = MlaDecodeMmaHeadsPerBlock(heads) / 16;
  return MakeLayout(slabs, kv_fp8, kv_lora_rank + rope_dim, row_bytes).total <= static_cast<size_t>(MaxSharedBytesPerBlock());
}

absl::Status MlaDecodeMma(const MlaDecodeParams& p, const MlaDecodePlan& plan, cudaStream_t stream) {
  if (!MlaDecodeFitsMma(p.heads, p.kv_lora_rank, p.rope_dim, p.kv_fp8) ||
      plan.heads_per_block != MlaDecodeMmaHeadsPerBlock(p.heads)) {
    return absl::InvalidArgumentError("MlaDecode: shapes do not fit the MMA kernel");
  }
  return p.kv_lora_rank == 256 ? LaunchRank<256>(p, plan, stream) : LaunchRank<512>(p, plan, stream);
}

}  // namespace daedalus::cuda
