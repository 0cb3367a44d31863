// The DeepSeek forward pass on one NVIDIA GPU, with the kernels of kernels/cuda/: the same
// contract and the same sums as DeepSeekModel (worker/model.h), weights and the paged latent
// cache in device memory (plain cudaMalloc). Activations are float; weights BF16 (FP8 and F32
// checkpoints are converted to BF16 at upload); GEMMs run on tensor cores with the
// activations split into two bf16 halves (kernels/cuda/linear.h), except the routed experts,
// whose inputs are rounded to bf16 (the grouped GEMMs' speed matters there). The latent cache
// is bf16 or FP8 (the CPU's layouts, core/kv_row.h).
//
// MLA: one-token slices (and every slice under AttentionPath::kAbsorbed) attend in latent
// space (kernels/cuda/mla_decode.h); prefill slices in the naive form (mla_prefill.h).
// MoE: gate, permutation, grouped expert FFN and combine on the GPU. With an expert exchange
// (expert parallelism) the routed rows are staged through host memory for the transport.
// Not thread-safe: one thread drives Forward.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/mla_prefill.h"
#include "worker/model.h"
#include "worker/rope.h"
#include "worker/weights.h"

namespace daedalus {

struct GpuModelOptions {
  int device = 0;
  double memory_fraction = 0.9;  // of total device memory: weights + scratch + KV pool
  int64_t page_size = 64;
  int64_t max_kv_tokens = 0;     // cap on the KV pool (0: as much as the fraction allows)
  AttentionPath attention = AttentionPath::kAuto;
  cuda::GroupedGemmMode expert_gemm = cuda::GroupedGemmMode::kGrouped;
  // Every product at float precision (~2^-16), as the CPU's float tiers: the routed experts'
  // inputs and SiLU outputs split into bf16 hi + lo (twice the expert GEMM work) and MLA decode
  // on CUDA cores. Otherwise those are bf16 (2^-9) and decode uses tensor cores where it can.
  bool float_precision = false;
  // The latent cache in core/kv_row.h's FP8 layout (--kv-dtype fp8), else bf16.
  bool kv_fp8 = false;
};

class GpuModel final : public ForwardBackend {
 public:
  static absl::StatusOr<std::unique_ptr<GpuModel>> Create(const ModelWeights& weights, const GpuModelOptions& options);
  ~GpuModel() override;

  absl::Status Forward(const ForwardBatch& batch, float* logits, const MoeContext& moe) override;

  int64_t kv_capacity_tokens() const { return total_pages_ * options_.page_size; }
  size_t weight_bytes() const { return weight_bytes_; }
  const ModelConfig& config() const { return config_; }

 private:
  struct Matrix {  // row-major bf16 [rows, cols] in device memory
    const uint16_t* w = nullptr;
    int64_t rows = 0, cols = 0;
  };
  struct Layer {
    const float *input_layernorm = nullptr, *post_attention_layernorm = nullptr;
    const float *q_a_layernorm = nullptr, *kv_a_layernorm = nullptr;
    Matrix q_a, q_b, q, kv_a, kv_b, o;
    bool moe = false;
    Matrix dense_gate_up, dense_down;  // gate rows then up rows
    Matrix gate;
    const float* bias = nullptr;
    std::vector<const uint16_t*> expert_gate_up, expert_down;  // by expert id; null where not loaded
    bool has_shared = false;
    Matrix shared_gate_up, shared_down;
  };

  GpuModel(const ModelWeights& weights, const GpuModelOptions& options);
  absl::Status Upload();
  absl::StatusOr<Matrix> UploadMatrix(const WeightView& w);
  absl::StatusOr<Matrix> UploadGateUp(const WeightView& gate, const WeightView& up);
  absl::Status UploadInto(const WeightView& w, uint16_t* out);
  absl::StatusOr<const float*> UploadFloats(const std::vector<float>& v);
  absl::StatusOr<void*> Allocate(size_t bytes);
  absl::Status SizeKvPool();

  absl::Status Linear(const float* x, int64_t m, int64_t ldx, const Matrix& w, float* y, int64_t ldy);
  absl::Status Attention(const Layer& L, int64_t layer, const ForwardBatch& batch);
  absl::Status Mlp(const Matrix& gate_up, const Matrix& down, const float* x, int64_t n, float* y);
  absl::Status Moe(const Layer& L, int64_t layer, int64_t n_tokens, const MoeContext& moe);

  const ModelWeights& weights_;
  const ModelConfig& config_;
  GpuModelOptions options_;
  RopeTable rope_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::vector<void*> allocations_;
  size_t weight_bytes_ = 0;
  const void* embed_ = nullptr;
  bool embed_bf16_ = true;
  const float* norm_ = nullptr;
  Matrix lm_head_;
  std::vector<Layer> layers_;
  const double* inv_freq_ = nullptr;
  void* pool_ = nullptr;
  int64_t total_pages_ = 0;
  int sm_count_ = 1;

  // Activations and scratch, grown to the largest batch seen.
  cuda::DeviceBuffer h_, x_, y_, q_, qa_, kva_, o_, meta_, q_abs_, q_lat_, o_lat_, o_abs_, mla_ws_;
  cuda::DeviceBuffer gate_logits_, expert_ids_, expert_weights_, group_begin_, row_of_slot_, x_grouped_, x_grouped_lo_, y_grouped_,
      permute_scratch_, shared_out_, mlp_gu_, mlp_act_, final_x_, logits_;
  cuda::LinearWorkspace linear_ws_;
  cuda::MlaPrefillWorkspace prefill_ws_;
  cuda::ExpertFfnWorkspace ffn_ws_;
  std::vector<int32_t> host_meta_;
  std::vector<int64_t> host_group_begin_;
  // Per Forward: where the metadata lies in meta_ (int32 offsets).
  struct Meta {
    int64_t token_ids = 0, positions = 0, kv_pages = 0, kv_slots = 0, abs_rows = 0, abs_kv_len = 0, abs_pages = 0,
            slice_pages = 0, logit_rows = 0;
    int64_t n_abs = 0, max_pages = 0, max_kv_len = 0;
    std::vector<int64_t> slice_page_offset;  // per slice, into slice_pages
    std::vector<bool> slice_absorbed;
  } meta_layout_;
};

}  // namespace daedalus
