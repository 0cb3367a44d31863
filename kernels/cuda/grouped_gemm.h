// The routed experts' FFN over variable-sized groups on the GPU: for every expert e with
// rows, y[rows of e] = down_e · (silu(gate_e · x) ⊙ (up_e · x)), x in bf16 (as Permute writes
// it), BF16 weights (FP8 checkpoints are dequantized to BF16 at load), float accumulation and
// output. Each stage is one grouped GEMM through cuBLAS, in one of two forms the benchmark
// measures against each other: kGrouped, one cublasGemmGroupedBatchedEx call over all
// non-empty groups, or kLoop, one cublasGemmEx per non-empty group, spread over a few side
// streams (one GEMM of a few rows leaves most of the device idle) and joined back.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cuda/device.h"

namespace daedalus::cuda {

enum class GroupedGemmMode { kGrouped, kLoop };

// One stage: for each group g with rows, y[begin[g] .. begin[g+1]) = x[same rows] · W_gᵀ.
struct GroupedGemmParams {
  const uint16_t* x = nullptr;               // [rows, k] bf16, grouped
  const int64_t* group_begin = nullptr;      // host [n_groups + 1]
  int64_t n_groups = 0;
  const uint16_t* const* w = nullptr;        // host [n_groups] device pointers, [n, k] bf16 (null: no rows may go there)
  int64_t n = 0;
  int64_t k = 0;
  float* y = nullptr;                        // [rows, n]
  GroupedGemmMode mode = GroupedGemmMode::kGrouped;
  bool accumulate = false;                   // y += instead of y =
  uint16_t* y_bf16 = nullptr;                // or, instead of y, [rows, n] bf16 (rounded once)
};

// Side streams for the loop, each with a cuBLAS handle of its own (its own workspace), made on
// first use and joined back to the caller's stream after every call.
class GemmLanes {
 public:
  static constexpr int kLanes = 4;
  GemmLanes() = default;
  GemmLanes(const GemmLanes&) = delete;
  GemmLanes& operator=(const GemmLanes&) = delete;
  ~GemmLanes();
  absl::Status Ensure();
  bool ready() const { return ready_; }
  cublasHandle_t cublas(int i) const { return cublas_[i]; }
  // Makes every lane wait for the work queued on `stream` so far.
  absl::Status Fork(cudaStream_t stream);
  // Makes `stream` wait for the work queued on lanes [0, used).
  absl::Status Join(cudaStream_t stream, int used);

 private:
  bool ready_ = false;
  cudaStream_t streams_[kLanes] = {};
  cublasHandle_t cublas_[kLanes] = {};
  cudaEvent_t fork_ = nullptr, done_[kLanes] = {};
};

struct GroupedGemmWorkspace {
  // Set when cuBLAS refused the grouped call (not supported for these types on this device):
  // later calls go straight to the loop.
  bool grouped_unsupported = false;
  DeviceBuffer pointers;                     // device copies of the per-group pointer arrays
  std::vector<const void*> a, b;
  std::vector<void*> c;
  std::vector<int> m, n, k, lda, ldb, ldc, group_size;
  std::vector<cublasOperation_t> ta, tb;
  std::vector<float> alpha, beta;
  GemmLanes lanes;
};

absl::Status GroupedGemm(cublasHandle_t cublas, const GroupedGemmParams& p, GroupedGemmWorkspace& ws,
                         cudaStream_t stream);

struct ExpertFfnParams {
  const uint16_t* x = nullptr;               // [rows, hidden] bf16, grouped by expert (Permute)
  const int64_t* group_begin = nullptr;      // host [n_experts + 1]
  int64_t n_experts = 0;
  const uint16_t* const* w_gate_up = nullptr;  // host [n_experts]: [2·inter, hidden], gate rows then up rows
  const uint16_t* const* w_down = nullptr;     // host [n_experts]: [hidden, inter]
  int64_t hidden = 0;
  int64_t inter = 0;
  float* y = nullptr;                        // [rows, hidden]
  GroupedGemmMode mode = GroupedGemmMode::kGrouped;
  // Or null. With it, x is x_hi + x_lo (both bf16, as Permute's split output) and the SiLU
  // output is split the same way: float precision (~2^-16) for twice the GEMM work.
  const uint16_t* x_lo = nullptr;
};

struct ExpertFfnWorkspace {
  DeviceBuffer gate_up, act, act_lo;
  GroupedGemmWorkspace gemm;
};

absl::Status ExpertFfn(cublasHandle_t cublas, const ExpertFfnParams& p, ExpertFfnWorkspace& ws, cudaStream_t stream);

}  // namespace daedalus::cuda
