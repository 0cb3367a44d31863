#include "kernels/cuda/common.cuh"
#include "kernels/cuda/permute.h"

namespace daedalus::cuda {
namespace {

constexpr int kThreads = 256;

// One block per expert: walks the tokens in order, ranking the slots that chose this expert
// (a block-wide prefix count per chunk of 256 tokens). rank[slot] = its place in the group;
// count[e] = the group's size.
__global__ void RankKernel(PermuteParams p, int32_t* rank, int32_t* count) {
  __shared__ int warp_total[kThreads / 32];
  const int e = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int base = 0;
  for (int64_t t0 = 0; t0 < p.n_tokens; t0 += kThreads) {
    const int64_t t = t0 + threadIdx.x;
    int64_t slot = -1;
    if (t < p.n_tokens)
      for (int64_t k = 0; k < p.topk; ++k)
        if (p.expert_ids[t * p.topk + k] == e) slot = t * p.topk + k;
    const unsigned ballot = __ballot_sync(0xffffffffu, slot >= 0);
    if (lane == 0) warp_total[warp] = __popc(ballot);
    __syncthreads();
    int before = base;
    for (int w = 0; w < warp; ++w) before += warp_total[w];
    if (slot >= 0) rank[slot] = before + __popc(ballot & ((1u << lane) - 1));
    int chunk = 0;
    for (int w = 0; w < kThreads / 32; ++w) chunk += warp_total[w];
    base += chunk;
    __syncthreads();
  }
  if (threadIdx.x == 0) count[e] = base;
}

__global__ void OffsetsKernel(PermuteParams p, const int32_t* count) {
  if (threadIdx.x != 0) return;
  int64_t sum = 0;
  for (int64_t e = 0; e < p.n_experts; ++e) {
    p.group_begin[e] = sum;
    sum += count[e];
  }
  p.group_begin[p.n_experts] = sum;
}

// One block per slot: its row, and the activation copied there as bf16.
__global__ void ScatterKernel(PermuteParams p, const int32_t* rank) {
  const int64_t slot = blockIdx.x, t = slot / p.topk;
  const int64_t row = p.group_begin[p.expert_ids[slot]] + rank[slot];
  if (threadIdx.x == 0) p.row_of_slot[slot] = static_cast<int32_t>(row);
  for (int64_t i = threadIdx.x; i < p.hidden; i += blockDim.x) {
    const float v = p.x[t * p.hidden + i];
    const uint16_t hi = ToBf16Bits(v);
    p.x_grouped[row * p.hidden + i] = hi;
    if (p.x_grouped_lo != nullptr) p.x_grouped_lo[row * p.hidden + i] = ToBf16Bits(v - Bf16Bits(hi));
  }
}

__global__ void UnpermuteKernel(UnpermuteParams p) {
  const int64_t t = blockIdx.x;
  for (int64_t i = threadIdx.x; i < p.hidden; i += blockDim.x) {
    float sum = 0;
    for (int64_t k = 0; k < p.topk; ++k)
      sum += p.weights[t * p.topk + k] * p.y_grouped[static_cast<int64_t>(p.row_of_slot[t * p.topk + k]) * p.hidden + i];
    p.out[t * p.hidden + i] = p.shared != nullptr ? sum + p.shared[t * p.hidden + i] : sum;
  }
}

}  // namespace

absl::Status Permute(const PermuteParams& p, cudaStream_t stream) {
  if (p.n_experts == 0) return absl::OkStatus();
  int32_t* rank = p.scratch;
  int32_t* count = p.scratch + p.n_tokens * p.topk;
  RankKernel<<<static_cast<unsigned>(p.n_experts), kThreads, 0, stream>>>(p, rank, count);
  OffsetsKernel<<<1, 32, 0, stream>>>(p, count);
  if (p.n_tokens > 0) ScatterKernel<<<static_cast<unsigned>(p.n_tokens * p.topk), 128, 0, stream>>>(p, rank);
  return DAEDALUS_CUDA_LAUNCH_STATUS("Permute");
}

absl::Status Unpermute(const UnpermuteParams& p, cudaStream_t stream) {
  if (p.n_tokens == 0) return absl::OkStatus();
  UnpermuteKernel<<<static_cast<unsigned>(p.n_tokens), 256, 0, stream>>>(p);
  return DAEDALUS_CUDA_LAUNCH_STATUS("Unpermute");
}

}  // namespace daedalus::cuda
