// CudaBackend's life: creation, the weights' upload (each host weight the model names mapped to
// its device copy), the KV pool's sizing, and the lookups the ops use.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/kv_row.h"
#include "core/status.h"
#include "kernels/cuda/unpack_weights.h"
#include "worker/cuda/cuda_backend.h"

namespace daedalus {

CudaBackend::CudaBackend(const ModelWeights& weights, const CudaBackendOptions& options)
    : weights_(weights), config_(weights.config), options_(options), rope_(weights.config) {}

CudaBackend::~CudaBackend() {
  if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
  for (void* p : allocations_) (void)cudaFree(p);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const ModelWeights& weights, const CudaBackendOptions& options) {
  RETURN_IF_ERROR(cuda::DevicePresent());
  int count = 0;
  DAEDALUS_CUDA_RETURN(cudaGetDeviceCount(&count));
  if (options.device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("no CUDA device ", options.device, ": this machine has ", count));
  }
  DAEDALUS_CUDA_RETURN(cudaSetDevice(options.device));
  std::unique_ptr<CudaBackend> m(new CudaBackend(weights, options));
  DAEDALUS_CUDA_RETURN(cudaStreamCreateWithFlags(&m->stream_, cudaStreamNonBlocking));
  RETURN_IF_ERROR(cuda::CublasError(cublasCreate(&m->cublas_), "cublasCreate"));
  m->sm_count_ = cuda::SmCount(options.device);
  RETURN_IF_ERROR(m->Upload());
  RETURN_IF_ERROR(m->SizeKvPool());
  return m;
}

absl::StatusOr<void*> CudaBackend::Allocate(size_t bytes) {
  void* p = nullptr;
  if (const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 1)); err != cudaSuccess) {
    return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc of ", bytes, " bytes (", weight_bytes_,
                                                     " bytes already held): ", cudaGetErrorString(err)));
  }
  allocations_.push_back(p);
  weight_bytes_ += bytes;
  return p;
}

absl::Status CudaBackend::UploadFloats(const std::vector<float>& v) {
  ASSIGN_OR_RETURN(void* p, Allocate(v.size() * 4));
  if (!v.empty()) DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(p, v.data(), v.size() * 4, cudaMemcpyHostToDevice, stream_));
  vectors_[&v] = static_cast<const float*>(p);
  return absl::OkStatus();
}

// Copies the weight as the CPU path holds it to the device, then unpacks it into `out`.
absl::Status CudaBackend::UploadInto(const WeightView& w, uint16_t* out) {
  cuda::UnpackParams u;
  const void* src = nullptr;
  size_t src_bytes = 0;
  if (w.dtype == DType::kF32) {
    u.source = cuda::WeightSource::kRowMajorF32, src = w.data, src_bytes = static_cast<size_t>(w.rows * w.cols) * 4;
  } else if (w.dtype == DType::kBF16 && w.packed != nullptr) {
    u.source = cuda::WeightSource::kPanelBf16, src = w.packed;
    src_bytes = static_cast<size_t>(cuda::SourceElements(u.source, w.rows, w.cols)) * 2;
  } else if (w.dtype == DType::kBF16) {
    u.source = cuda::WeightSource::kRowMajorBf16, src = w.data, src_bytes = static_cast<size_t>(w.rows * w.cols) * 2;
  } else {
    u.source = cuda::WeightSource::kPanelFp8, src = w.packed;
    src_bytes = static_cast<size_t>(cuda::SourceElements(u.source, w.rows, w.cols));
  }
  if (src == nullptr) return absl::InternalError("CudaBackend: a weight without data");
  cuda::DeviceBuffer staging, scales;
  RETURN_IF_ERROR(staging.Reserve(src_bytes));
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(staging.data(), src, src_bytes, cudaMemcpyHostToDevice, stream_));
  if (w.dtype == DType::kF8E4M3) {
    const size_t n = static_cast<size_t>(Fp8ScaleBlocks(w.rows) * Fp8ScaleBlocks(w.cols)) * 4;
    RETURN_IF_ERROR(scales.Reserve(n));
    DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(scales.data(), w.scale_inv, n, cudaMemcpyHostToDevice, stream_));
    u.scale_inv = scales.as<float>();
  }
  u.in = staging.data();
  u.rows = w.rows;
  u.cols = w.cols;
  u.out = out;
  RETURN_IF_ERROR(cuda::UnpackWeight(u, stream_));
  DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));  // before the staging buffers go
  return absl::OkStatus();
}

absl::Status CudaBackend::UploadMatrix(const WeightView& w) {
  ASSIGN_OR_RETURN(void* p, Allocate(static_cast<size_t>(w.rows * w.cols) * 2));
  RETURN_IF_ERROR(UploadInto(w, static_cast<uint16_t*>(p)));
  matrices_[&w] = Matrix{static_cast<const uint16_t*>(p), w.rows, w.cols};
  return absl::OkStatus();
}

absl::StatusOr<CudaBackend::GateUpDown> CudaBackend::UploadMlp(const MlpWeights& w) {
  GateUpDown m;
  ASSIGN_OR_RETURN(void* p, Allocate(static_cast<size_t>(2 * w.gate_proj.rows * w.gate_proj.cols) * 2));
  auto* gate_up = static_cast<uint16_t*>(p);
  RETURN_IF_ERROR(UploadInto(w.gate_proj, gate_up));
  RETURN_IF_ERROR(UploadInto(w.up_proj, gate_up + w.gate_proj.rows * w.gate_proj.cols));
  m.gate_up = Matrix{gate_up, 2 * w.gate_proj.rows, w.gate_proj.cols};
  ASSIGN_OR_RETURN(void* down, Allocate(static_cast<size_t>(w.down_proj.rows * w.down_proj.cols) * 2));
  RETURN_IF_ERROR(UploadInto(w.down_proj, static_cast<uint16_t*>(down)));
  m.down = Matrix{static_cast<const uint16_t*>(down), w.down_proj.rows, w.down_proj.cols};
  return m;
}

absl::Status CudaBackend::Upload() {
  const ModelConfig& c = config_;
  const WeightView& e = weights_.embed_tokens;
  if (e.data == nullptr || (e.dtype != DType::kBF16 && e.dtype != DType::kF32)) {
    return absl::FailedPreconditionError("CudaBackend: embed_tokens must be row-major BF16 or F32");
  }
  const size_t embed_bytes = static_cast<size_t>(e.rows * e.cols) * DTypeSize(e.dtype);
  ASSIGN_OR_RETURN(void* embed, Allocate(embed_bytes));
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(embed, e.data, embed_bytes, cudaMemcpyHostToDevice, stream_));
  embed_ = embed;
  embed_bf16_ = e.dtype == DType::kBF16;
  RETURN_IF_ERROR(UploadFloats(weights_.norm));
  RETURN_IF_ERROR(UploadMatrix(weights_.lm_head));
  ASSIGN_OR_RETURN(void* inv_freq, Allocate(rope_.inv_freq().size() * sizeof(double)));
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(inv_freq, rope_.inv_freq().data(), rope_.inv_freq().size() * sizeof(double),
                                       cudaMemcpyHostToDevice, stream_));
  inv_freq_ = static_cast<const double*>(inv_freq);

  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    RETURN_IF_ERROR(UploadFloats(w.input_layernorm));
    RETURN_IF_ERROR(UploadFloats(w.post_attention_layernorm));
    const AttentionWeights& a = w.attn;
    if (c.q_lora_rank) {
      RETURN_IF_ERROR(UploadMatrix(*a.q_a_proj));
      RETURN_IF_ERROR(UploadMatrix(*a.q_b_proj));
      RETURN_IF_ERROR(UploadFloats(a.q_a_layernorm));
    } else {
      RETURN_IF_ERROR(UploadMatrix(*a.q_proj));
    }
    RETURN_IF_ERROR(UploadMatrix(a.kv_a_proj_with_mqa));
    RETURN_IF_ERROR(UploadFloats(a.kv_a_layernorm));
    RETURN_IF_ERROR(UploadMatrix(a.kv_b_proj));
    RETURN_IF_ERROR(UploadMatrix(a.o_proj));
    if (!w.moe) {
      ASSIGN_OR_RETURN(mlps_[&w.dense], UploadMlp(w.dense));
      continue;
    }
    RETURN_IF_ERROR(UploadMatrix(w.gate));
    RETURN_IF_ERROR(UploadFloats(w.e_score_correction_bias));
    RoutedExperts& routed = routed_[&w];
    routed.gate_up.assign(c.n_routed_experts, nullptr);
    routed.down.assign(c.n_routed_experts, nullptr);
    for (int64_t x = 0; x < c.n_routed_experts && x < static_cast<int64_t>(w.experts.size()); ++x) {
      const MlpWeights& m = w.experts[x];
      if (m.gate_proj.rows == 0) continue;  // not placed on this rank
      ASSIGN_OR_RETURN(const GateUpDown expert, UploadMlp(m));
      routed.gate_up[x] = expert.gate_up.w;
      routed.down[x] = expert.down.w;
    }
    if (w.shared_experts) {
      ASSIGN_OR_RETURN(mlps_[&*w.shared_experts], UploadMlp(*w.shared_experts));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::SizeKvPool() {
  size_t free = 0, total = 0;
  DAEDALUS_CUDA_RETURN(cudaMemGetInfo(&free, &total));
  const double page_bytes = static_cast<double>(config_.num_hidden_layers * options_.page_size *
                                                KvRowBytes(config_, options_.kv_fp8 ? DType::kF8E4M3 : DType::kBF16));
  // Held back for activations and GEMM scratch, which grow with the batch.
  const double reserve = 512.0 * (1 << 20) + 0.02 * static_cast<double>(total);
  const double budget = options_.memory_fraction * static_cast<double>(total) - static_cast<double>(total - free) - reserve;
  int64_t pages = budget > 0 ? static_cast<int64_t>(budget / page_bytes) : 0;
  if (options_.max_kv_tokens > 0) pages = std::min(pages, (options_.max_kv_tokens + options_.page_size - 1) / options_.page_size);
  if (pages < 1) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "no room for the KV cache: ", total >> 20, " MiB device memory, ", (total - free) >> 20, " MiB in use (weights ",
        weight_bytes_ >> 20, " MiB), --gpu-memory-fraction ", options_.memory_fraction, ", ", reserve / (1 << 20),
        " MiB kept for activations; a page of ", options_.page_size, " tokens needs ", page_bytes / (1 << 20), " MiB"));
  }
  total_pages_ = pages;
  ASSIGN_OR_RETURN(void* pool, Allocate(static_cast<size_t>(pages * page_bytes)));
  weight_bytes_ -= static_cast<size_t>(pages * page_bytes);
  pool_ = pool;
  return absl::OkStatus();
}

absl::StatusOr<CudaBackend::Matrix> CudaBackend::DeviceMatrix(const WeightView* w) const {
  const auto it = matrices_.find(w);
  if (it == matrices_.end()) return absl::InternalError("CudaBackend: a weight that was not uploaded");
  return it->second;
}

absl::StatusOr<const float*> CudaBackend::DeviceFloats(const std::vector<float>* v) const {
  const auto it = vectors_.find(v);
  if (it == vectors_.end()) return absl::InternalError("CudaBackend: a norm or bias that was not uploaded");
  return it->second;
}

absl::StatusOr<const CudaBackend::GateUpDown*> CudaBackend::DeviceMlp(const MlpWeights* w) const {
  const auto it = mlps_.find(w);
  if (it == mlps_.end()) return absl::InternalError("CudaBackend: an MLP that was not uploaded");
  return &it->second;
}

}  // namespace daedalus
