// The CUDA backend of worker/backend.h on one NVIDIA GPU: weights and the paged latent cache in
// device memory (plain cudaMalloc), ops as the kernels of kernels/cuda/ on one stream; the
// forward pass itself is DeepSeekModel's (worker/model.h). Activations are float; weights BF16
// (FP8 and F32 checkpoints are converted to BF16 at upload); GEMMs run on tensor cores with
// the activations split into two bf16 halves (kernels/cuda/linear.h), except the routed
// experts, whose inputs are rounded to bf16 (the grouped GEMMs' speed matters there). The
// latent cache is bf16 or FP8 (the CPU's layouts, core/kv_row.h), indexed by the page ids of
// the engine's PagedKvCache (which then holds page tables only).
//
// MlaAbsorbed runs kernels/cuda/mla_decode.h, MlaNaive mla_prefill.h; LocalExperts the gate's
// permutation, the grouped expert FFN and the weighted combine on the GPU; ExpertRows and
// Combine (expert parallelism) stage rows through host memory for the transport.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/mla_prefill.h"
#include "worker/backend.h"
#include "worker/model.h"
#include "worker/rope.h"
#include "worker/weights.h"

namespace daedalus {

struct CudaBackendOptions {
  int device = 0;
  double memory_fraction = 0.9;  // of total device memory: weights + scratch + KV pool
  int64_t page_size = 64;
  int64_t max_kv_tokens = 0;     // cap on the KV pool (0: as much as the fraction allows)
  cuda::GroupedGemmMode expert_gemm = cuda::GroupedGemmMode::kGrouped;
  // Every product at float precision (~2^-16), as the CPU's float tiers: the routed experts'
  // inputs and SiLU outputs split into bf16 hi + lo (twice the expert GEMM work) and MLA decode
  // on CUDA cores. Otherwise those are bf16 (2^-9) and decode uses tensor cores where it can.
  bool float_precision = false;
  // The latent cache in core/kv_row.h's FP8 layout (--kv-dtype fp8), else bf16.
  bool kv_fp8 = false;
};

class CudaBackend final : public Backend {
 public:
  // Uploads `weights` (which outlive the backend) and sizes the KV pool.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const ModelWeights& weights,
                                                             const CudaBackendOptions& options);
  ~CudaBackend() override;

  absl::Status Begin(const ForwardBatch& batch, const std::vector<bool>& absorbed) override;
  absl::StatusOr<void*> Reserve(Buffer which, size_t bytes) override;
  absl::StatusOr<const void*> ToHost(Buffer which, size_t bytes) override;
  absl::Status Upload(Buffer which, const void* host, size_t bytes) override;
  absl::Status Wait() override;
  absl::Status Embed(const WeightView& table, float* out) override;
  absl::Status RmsNorm(const RmsNormOp& op) override;
  absl::Status Add(float* y, const float* x, int64_t n) override;
  absl::Status Linear(const LinearOp* ops, int64_t n) override;
  absl::Status Rope(const RopeOp& op) override;
  absl::Status KvWrite(int64_t layer, const float* latent) override;
  absl::Status MlaNaive(const MlaOp& op) override;
  absl::Status MlaAbsorbed(const MlaOp& op) override;
  absl::Status Route(const RouteOp& op) override;
  absl::Status Mlp(const MlpOp& op) override;
  absl::Status LocalExperts(const LocalExpertsOp& op) override;
  absl::Status ExpertRows(const ExpertRowsOp& op) override;
  absl::Status Combine(const CombineOp& op) override;
  absl::Status LogitRows(const float* x, float* y) override;
  absl::Status Logits(const float* hidden, const std::vector<float>& norm, const WeightView& lm_head,
                      float* logits) override;

  int64_t kv_capacity_tokens() const { return total_pages_ * options_.page_size; }
  size_t weight_bytes() const { return weight_bytes_; }

 private:
  struct Matrix {  // row-major bf16 [rows, cols] in device memory
    const uint16_t* w = nullptr;
    int64_t rows = 0, cols = 0;
  };
  struct GateUpDown {  // an MLP: gate rows then up rows in one matrix, and down
    Matrix gate_up, down;
  };
  struct RoutedExperts {  // by expert id; null where not loaded on this rank
    std::vector<const uint16_t*> gate_up, down;
  };

  CudaBackend(const ModelWeights& weights, const CudaBackendOptions& options);
  absl::Status Upload();
  absl::Status UploadMatrix(const WeightView& w);
  absl::StatusOr<GateUpDown> UploadMlp(const MlpWeights& w);
  absl::Status UploadInto(const WeightView& w, uint16_t* out);
  absl::Status UploadFloats(const std::vector<float>& v);
  absl::StatusOr<void*> Allocate(size_t bytes);
  absl::Status SizeKvPool();

  // The device copies of host weights.
  absl::StatusOr<Matrix> DeviceMatrix(const WeightView* w) const;
  absl::StatusOr<const float*> DeviceFloats(const std::vector<float>* v) const;
  absl::StatusOr<const GateUpDown*> DeviceMlp(const MlpWeights* w) const;

  absl::Status Product(const float* x, int64_t m, int64_t ldx, const Matrix& w, float* y, int64_t ldy);
  absl::Status RunMlp(const GateUpDown& w, const float* x, int64_t n, float* y);
  absl::Status SharedExperts(const LayerWeights& w, const float* x, int64_t n, float* shared_out);
  absl::Status GroupedExperts(const LayerWeights& w, const int64_t* group_begin);

  const ModelWeights& weights_;
  const ModelConfig& config_;
  CudaBackendOptions options_;
  RopeTable rope_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::vector<void*> allocations_;
  size_t weight_bytes_ = 0;
  const void* embed_ = nullptr;
  bool embed_bf16_ = true;
  std::unordered_map<const WeightView*, Matrix> matrices_;
  std::unordered_map<const std::vector<float>*, const float*> vectors_;
  std::unordered_map<const MlpWeights*, GateUpDown> mlps_;
  std::unordered_map<const LayerWeights*, RoutedExperts> routed_;
  const double* inv_freq_ = nullptr;
  void* pool_ = nullptr;
  int64_t total_pages_ = 0;
  int sm_count_ = 1;

  std::array<cuda::DeviceBuffer, static_cast<size_t>(Buffer::kCount)> buffers_;
  std::array<std::vector<uint8_t>, static_cast<size_t>(Buffer::kCount)> host_;  // ToHost's copies
  // Scratch of the ops, grown to the largest batch seen.
  cuda::DeviceBuffer meta_, q_abs_, q_lat_, o_lat_, o_abs_, mla_ws_, group_begin_, row_of_slot_, x_grouped_,
      x_grouped_lo_, y_grouped_, permute_scratch_, shared_out_, mlp_gu_, mlp_act_, final_x_, logits_;
  cuda::LinearWorkspace linear_ws_;
  cuda::MlaPrefillWorkspace prefill_ws_;
  cuda::ExpertFfnWorkspace ffn_ws_;
  std::vector<int32_t> host_meta_;
  std::vector<int64_t> host_group_begin_;
  // The batch of the last Begin, and where its metadata lies in meta_ (int32 offsets).
  const ForwardBatch* batch_ = nullptr;
  struct Meta {
    int64_t n_tokens = 0;
    int64_t token_ids = 0, positions = 0, kv_pages = 0, kv_slots = 0, abs_rows = 0, abs_kv_len = 0, abs_pages = 0,
            slice_pages = 0, logit_rows = 0;
    int64_t n_abs = 0, max_pages = 0, max_kv_len = 0;
    std::vector<int64_t> slice_page_offset;  // per slice, into slice_pages
    std::vector<bool> slice_absorbed;
  } meta_layout_;
};

}  // namespace daedalus
