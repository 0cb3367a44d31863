#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gate.h"

namespace daedalus::cuda {
namespace {

__device__ __forceinline__ bool Better(const float* v, int a, int b) { return v[a] > v[b] || (v[a] == v[b] && a < b); }

// Shared memory: scores [E], choice [E], group_score [n_group].
__global__ void GateKernel(GateParams p) {
  extern __shared__ float smem[];
  __shared__ float scratch[32];
  const int E = static_cast<int>(p.n_routed_experts), K = static_cast<int>(p.num_experts_per_tok);
  float* scores = smem;
  float* choice = scores + E;
  float* group_score = choice + E;
  const float* l = p.logits + blockIdx.x * p.n_routed_experts;
  if (p.sigmoid) {
    for (int e = threadIdx.x; e < E; e += blockDim.x) scores[e] = 1.0f / (1.0f + expf(-l[e]));
  } else {
    float max = -INFINITY;
    for (int e = threadIdx.x; e < E; e += blockDim.x) max = fmaxf(max, l[e]);
    max = BlockMax(max, scratch);
    for (int e = threadIdx.x; e < E; e += blockDim.x) scores[e] = expf(l[e] - max);
    __syncthreads();
    if (threadIdx.x == 0) {  // summed in expert order, as the CPU gate does
      float sum = 0;
      for (int e = 0; e < E; ++e) sum += scores[e];
      scratch[0] = sum;
    }
    __syncthreads();
    const float sum = scratch[0];
    for (int e = threadIdx.x; e < E; e += blockDim.x) scores[e] /= sum;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) choice[e] = p.bias ? scores[e] + p.bias[e] : scores[e];
  __syncthreads();
  if (threadIdx.x != 0) return;
  const int G = static_cast<int>(p.n_group), group_size = E / G;
  if (G > 1) {
    for (int g = 0; g < G; ++g) {
      const float* c = choice + g * group_size;
      float first = -INFINITY, second = -INFINITY, max = -INFINITY;
      for (int i = 0; i < group_size; ++i) {
        if (c[i] > first) {
          second = first;
          first = c[i];
        } else if (c[i] > second) {
          second = c[i];
        }
        max = fmaxf(max, c[i]);
      }
      group_score[g] = p.group_top2_sum ? first + second : max;
    }
    // Keep the topk_group best groups (ties: lower group first); mask the rest.
    uint64_t keep = 0;  // n_group ≤ 64
    for (int k = 0; k < p.topk_group; ++k) {
      int best = -1;
      for (int g = 0; g < G; ++g)
        if (!(keep >> g & 1) && (best < 0 || Better(group_score, g, best))) best = g;
      keep |= uint64_t{1} << best;
    }
    for (int e = 0; e < E; ++e)
      if (!(keep >> (e / group_size) & 1)) choice[e] = -INFINITY;
  }
  // Top-K of choice, by repeated selection, then ascending ids.
  int32_t* ids = p.expert_ids + blockIdx.x * K;
  float* w = p.weights + blockIdx.x * K;
  for (int k = 0; k < K; ++k) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      bool taken = false;
      for (int j = 0; j < k; ++j) taken |= ids[j] == e;
      if (!taken && (best < 0 || Better(choice, e, best))) best = e;
    }
    ids[k] = best;
  }
  for (int i = 1; i < K; ++i)  // insertion sort of K ids
    for (int j = i; j > 0 && ids[j - 1] > ids[j]; --j) {
      const int32_t t = ids[j];
      ids[j] = ids[j - 1];
      ids[j - 1] = t;
    }
  float sum = 0;
  for (int k = 0; k < K; ++k) sum += w[k] = scores[ids[k]];
  const float scale = p.norm_topk_prob ? p.routed_scaling_factor / sum : p.routed_scaling_factor;
  for (int k = 0; k < K; ++k) w[k] *= scale;
}

}  // namespace

absl::Status Route(const GateParams& p, cudaStream_t stream) {
  if (p.n_tokens == 0) return absl::OkStatus();
  if (p.n_group < 1 || p.n_group > 64 || p.n_routed_experts % p.n_group != 0) {
    return absl::InvalidArgumentError("Route: n_group must be 1..64 and divide n_routed_experts");
  }
  const size_t shared = sizeof(float) * static_cast<size_t>(2 * p.n_routed_experts + p.n_group);
  GateKernel<<<static_cast<unsigned>(p.n_tokens), 128, shared, stream>>>(p);
  return DAEDALUS_CUDA_LAUNCH_STATUS("Route");
}

}  // namespace daedalus::cuda
