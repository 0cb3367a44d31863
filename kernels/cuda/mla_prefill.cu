#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kv_row.cuh"
#include "kernels/cuda/mla_prefill.h"

namespace daedalus::cuda {
namespace {

// latent[s, :] = the cached row of position s, as float.
__global__ void GatherKernel(MlaPrefillParams p, float* latent) {
  const int64_t s = blockIdx.x, dim = p.kv_lora_rank + p.rope;
  const int64_t page = p.pages[s / p.page_size], slot = s % p.page_size;
  const uint8_t* row = KvRow(p.pool, page, p.n_layers, p.layer, p.page_size, slot,
                             KvRowBytes(p.kv_lora_rank, p.rope, p.kv_fp8));
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) latent[s * dim + i] = KvRowValue(row, i, p.kv_lora_rank, p.kv_fp8);
}

// scores [heads, n, S]: row t of a head sees keys [0, start + t]; scaled, softmaxed, zero past.
__global__ void CausalSoftmaxKernel(float* scores, int64_t n, int64_t S, int64_t start, float scale) {
  __shared__ float scratch[32];
  float* row = scores + blockIdx.x * S;
  const int64_t t = blockIdx.x % n, visible = start + t + 1;
  float max = -INFINITY;
  for (int64_t s = threadIdx.x; s < visible; s += blockDim.x) max = fmaxf(max, row[s] * scale);
  max = BlockMax(max, scratch);
  float sum = 0;
  for (int64_t s = threadIdx.x; s < visible; s += blockDim.x) {
    const float e = expf(row[s] * scale - max);
    row[s] = e;
    sum += e;
  }
  sum = BlockSum(sum, scratch);
  const float inv = 1.0f / sum;
  for (int64_t s = threadIdx.x; s < S; s += blockDim.x) row[s] = s < visible ? row[s] * inv : 0.0f;
}

}  // namespace

absl::Status MlaPrefill(cublasHandle_t cublas, const MlaPrefillParams& p, MlaPrefillWorkspace& ws, cudaStream_t stream) {
  if (p.n_tokens == 0) return absl::OkStatus();
  const int64_t S = p.start_pos + p.n_tokens, n = p.n_tokens, dim = p.kv_lora_rank + p.rope;
  const int64_t qk = p.qk_nope + p.rope, kv_w = p.qk_nope + p.v_head;
  // Heads per chunk: scores, and the chunk's decompressed keys and values (whose split-bf16
  // product takes twice that again), within p.chunk_floats each, so that a prompt chunk far
  // into a long context needs scratch of a few heads' worth of S, not all of them.
  int64_t chunk = std::min(p.chunk_floats / (n * S), p.chunk_floats / (S * kv_w));
  chunk = chunk < 1 ? 1 : (chunk > p.heads ? p.heads : chunk);
  if (absl::Status s = ws.latent.Reserve(static_cast<size_t>(S * dim) * 4); !s.ok()) return s;
  if (absl::Status s = ws.kv.Reserve(static_cast<size_t>(S * chunk * kv_w) * 4); !s.ok()) return s;
  if (absl::Status s = ws.scores.Reserve(static_cast<size_t>(chunk * n * S) * 4); !s.ok()) return s;
  float* latent = ws.latent.as<float>();
  float* kv = ws.kv.as<float>();
  float* scores = ws.scores.as<float>();
  GatherKernel<<<static_cast<unsigned>(S), 128, 0, stream>>>(p, latent);
  if (absl::Status s = DAEDALUS_CUDA_LAUNCH_STATUS("MlaPrefill: GatherKernel"); !s.ok()) return s;
  if (absl::Status s = CublasError(cublasSetStream(cublas, stream), "cublasSetStream"); !s.ok()) return s;
  const float one = 1.0f, zero = 0.0f;
  for (int64_t h0 = 0; h0 < p.heads; h0 += chunk) {
    const int64_t hc = h0 + chunk <= p.heads ? chunk : p.heads - h0, ld_chunk = hc * kv_w;
    // kv [S, hc, qk_nope + v_head] = c_kv · (the chunk's rows of kv_b_proj)ᵀ.
    LinearParams lin;
    lin.x = latent, lin.m = S, lin.k = p.kv_lora_rank, lin.ldx = dim;
    lin.w = p.kv_b_proj + h0 * kv_w * p.kv_lora_rank, lin.n = ld_chunk, lin.ldw = p.kv_lora_rank;
    lin.y = kv, lin.ldy = ld_chunk;
    if (absl::Status s = Linear(cublas, lin, ws.linear, stream); !s.ok()) return s;
    // Column-major views. scores'[S, n] per head = k_nope'ᵀ · q_nope' (+ k_pe'ᵀ · q_pe').
    cublasStatus_t st = cublasSgemmStridedBatched(
        cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(S), static_cast<int>(n), static_cast<int>(p.qk_nope), &one,
        kv, static_cast<int>(ld_chunk), kv_w, p.q + h0 * qk, static_cast<int>(p.q_row_stride), qk, &zero,
        scores, static_cast<int>(S), n * S, static_cast<int>(hc));
    if (absl::Status s = CublasError(st, "MlaPrefill: q_nope · k_nope"); !s.ok()) return s;
    st = cublasSgemmStridedBatched(cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(S), static_cast<int>(n),
                                   static_cast<int>(p.rope), &one, latent + p.kv_lora_rank, static_cast<int>(dim), 0,
                                   p.q + h0 * qk + p.qk_nope, static_cast<int>(p.q_row_stride), qk, &one, scores,
                                   static_cast<int>(S), n * S, static_cast<int>(hc));
    if (absl::Status s = CublasError(st, "MlaPrefill: q_pe · k_pe"); !s.ok()) return s;
    CausalSoftmaxKernel<<<static_cast<unsigned>(hc * n), 256, 0, stream>>>(scores, n, S, p.start_pos, p.scale);
    if (absl::Status s = DAEDALUS_CUDA_LAUNCH_STATUS("MlaPrefill: CausalSoftmaxKernel"); !s.ok()) return s;
    // o'[v_head, n] per head = v' · P'.
    st = cublasSgemmStridedBatched(cublas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(p.v_head), static_cast<int>(n),
                                   static_cast<int>(S), &one, kv + p.qk_nope, static_cast<int>(ld_chunk), kv_w,
                                   scores, static_cast<int>(S), n * S, &zero, p.out + h0 * p.v_head,
                                   static_cast<int>(p.out_row_stride), p.v_head, static_cast<int>(hc));
    if (absl::Status s = CublasError(st, "MlaPrefill: P · v"); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace daedalus::cuda
