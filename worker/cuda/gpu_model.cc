#include "worker/cuda/gpu_model.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/buffer.h"
#include "core/kv_row.h"
#include "core/status.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gate.h"
#include "kernels/cuda/kv_write.h"
#include "kernels/cuda/mla_decode.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/silu_mul.h"
#include "kernels/cuda/unpack_weights.h"
#include "kernels/ops.h"
#include "routing/gate.h"

namespace daedalus {

namespace {

template <typename T>
absl::Status Grow(cuda::DeviceBuffer& b, int64_t n) {
  return b.Reserve(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T));
}

}  // namespace

GpuModel::GpuModel(const ModelWeights& weights, const GpuModelOptions& options)
    : weights_(weights), config_(weights.config), options_(options), rope_(weights.config) {}

GpuModel::~GpuModel() {
  if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
  for (void* p : allocations_) (void)cudaFree(p);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::StatusOr<std::unique_ptr<GpuModel>> GpuModel::Create(const ModelWeights& weights, const GpuModelOptions& options) {
  RETURN_IF_ERROR(cuda::DevicePresent());
  int count = 0;
  DAEDALUS_CUDA_RETURN(cudaGetDeviceCount(&count));
  if (options.device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("no CUDA device ", options.device, ": this machine has ", count));
  }
  DAEDALUS_CUDA_RETURN(cudaSetDevice(options.device));
  std::unique_ptr<GpuModel> m(new GpuModel(weights, options));
  DAEDALUS_CUDA_RETURN(cudaStreamCreateWithFlags(&m->stream_, cudaStreamNonBlocking));
  RETURN_IF_ERROR(cuda::CublasError(cublasCreate(&m->cublas_), "cublasCreate"));
  m->sm_count_ = cuda::SmCount(options.device);
  RETURN_IF_ERROR(m->Upload());
  RETURN_IF_ERROR(m->SizeKvPool());
  return m;
}

absl::StatusOr<void*> GpuModel::Allocate(size_t bytes) {
  void* p = nullptr;
  if (const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 1)); err != cudaSuccess) {
    return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc of ", bytes, " bytes (", weight_bytes_,
                                                     " bytes already held): ", cudaGetErrorString(err)));
  }
  allocations_.push_back(p);
  weight_bytes_ += bytes;
  return p;
}

absl::StatusOr<const float*> GpuModel::UploadFloats(const std::vector<float>& v) {
  ASSIGN_OR_RETURN(void* p, Allocate(v.size() * 4));
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(p, v.data(), v.size() * 4, cudaMemcpyHostToDevice, stream_));
  return static_cast<const float*>(p);
}

// Copies the weight as the CPU path holds it to the device, then unpacks it into `out`.
absl::Status GpuModel::UploadInto(const WeightView& w, uint16_t* out) {
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
  if (src == nullptr) return absl::InternalError("GpuModel: a weight without data");
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

absl::StatusOr<GpuModel::Matrix> GpuModel::UploadMatrix(const WeightView& w) {
  ASSIGN_OR_RETURN(void* p, Allocate(static_cast<size_t>(w.rows * w.cols) * 2));
  RETURN_IF_ERROR(UploadInto(w, static_cast<uint16_t*>(p)));
  return Matrix{static_cast<const uint16_t*>(p), w.rows, w.cols};
}

absl::StatusOr<GpuModel::Matrix> GpuModel::UploadGateUp(const WeightView& gate, const WeightView& up) {
  ASSIGN_OR_RETURN(void* p, Allocate(static_cast<size_t>(2 * gate.rows * gate.cols) * 2));
  auto* out = static_cast<uint16_t*>(p);
  RETURN_IF_ERROR(UploadInto(gate, out));
  RETURN_IF_ERROR(UploadInto(up, out + gate.rows * gate.cols));
  return Matrix{out, 2 * gate.rows, gate.cols};
}

absl::Status GpuModel::Upload() {
  const ModelConfig& c = config_;
  const WeightView& e = weights_.embed_tokens;
  if (e.data == nullptr || (e.dtype != DType::kBF16 && e.dtype != DType::kF32)) {
    return absl::FailedPreconditionError("GpuModel: embed_tokens must be row-major BF16 or F32");
  }
  const size_t embed_bytes = static_cast<size_t>(e.rows * e.cols) * DTypeSize(e.dtype);
  ASSIGN_OR_RETURN(void* embed, Allocate(embed_bytes));
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(embed, e.data, embed_bytes, cudaMemcpyHostToDevice, stream_));
  embed_ = embed;
  embed_bf16_ = e.dtype == DType::kBF16;
  ASSIGN_OR_RETURN(norm_, UploadFloats(weights_.norm));
  ASSIGN_OR_RETURN(lm_head_, UploadMatrix(weights_.lm_head));
  ASSIGN_OR_RETURN(void* inv_freq, Allocate(rope_.inv_freq().size() * sizeof(double)));
  DAEDALUS_CUDA_RETURN(cudaMemcpy(inv_freq, rope_.inv_freq().data(), rope_.inv_freq().size() * sizeof(double),
                                  cudaMemcpyHostToDevice));
  inv_freq_ = static_cast<const double*>(inv_freq);

  layers_.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    Layer& L = layers_[l];
    ASSIGN_OR_RETURN(L.input_layernorm, UploadFloats(w.input_layernorm));
    ASSIGN_OR_RETURN(L.post_attention_layernorm, UploadFloats(w.post_attention_layernorm));
    const AttentionWeights& a = w.attn;
    if (c.q_lora_rank) {
      ASSIGN_OR_RETURN(L.q_a, UploadMatrix(*a.q_a_proj));
      ASSIGN_OR_RETURN(L.q_b, UploadMatrix(*a.q_b_proj));
      ASSIGN_OR_RETURN(L.q_a_layernorm, UploadFloats(a.q_a_layernorm));
    } else {
      ASSIGN_OR_RETURN(L.q, UploadMatrix(*a.q_proj));
    }
    ASSIGN_OR_RETURN(L.kv_a, UploadMatrix(a.kv_a_proj_with_mqa));
    ASSIGN_OR_RETURN(L.kv_a_layernorm, UploadFloats(a.kv_a_layernorm));
    ASSIGN_OR_RETURN(L.kv_b, UploadMatrix(a.kv_b_proj));
    ASSIGN_OR_RETURN(L.o, UploadMatrix(a.o_proj));
    L.moe = w.moe;
    if (!w.moe) {
      ASSIGN_OR_RETURN(L.dense_gate_up, UploadGateUp(w.dense.gate_proj, w.dense.up_proj));
      ASSIGN_OR_RETURN(L.dense_down, UploadMatrix(w.dense.down_proj));
      continue;
    }
    ASSIGN_OR_RETURN(L.gate, UploadMatrix(w.gate));
    if (!w.e_score_correction_bias.empty()) {
      ASSIGN_OR_RETURN(L.bias, UploadFloats(w.e_score_correction_bias));
    }
    L.expert_gate_up.assign(c.n_routed_experts, nullptr);
    L.expert_down.assign(c.n_routed_experts, nullptr);
    for (int64_t x = 0; x < c.n_routed_experts && x < static_cast<int64_t>(w.experts.size()); ++x) {
      const MlpWeights& m = w.experts[x];
      if (m.gate_proj.rows == 0) continue;  // not placed on this rank
      ASSIGN_OR_RETURN(Matrix gu, UploadGateUp(m.gate_proj, m.up_proj));
      ASSIGN_OR_RETURN(Matrix down, UploadMatrix(m.down_proj));
      L.expert_gate_up[x] = gu.w;
      L.expert_down[x] = down.w;
    }
    if (w.shared_experts) {
      L.has_shared = true;
      ASSIGN_OR_RETURN(L.shared_gate_up, UploadGateUp(w.shared_experts->gate_proj, w.shared_experts->up_proj));
      ASSIGN_OR_RETURN(L.shared_down, UploadMatrix(w.shared_experts->down_proj));
    }
  }
  return absl::OkStatus();
}

absl::Status GpuModel::SizeKvPool() {
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

absl::Status GpuModel::Linear(const float* x, int64_t m, int64_t ldx, const Matrix& w, float* y, int64_t ldy) {
  cuda::LinearParams p;
  p.x = x, p.m = m, p.k = w.cols, p.ldx = ldx;
  p.w = w.w, p.n = w.rows, p.ldw = w.cols;
  p.y = y, p.ldy = ldy;
  return cuda::Linear(cublas_, p, linear_ws_, stream_);
}

absl::Status GpuModel::Mlp(const Matrix& gate_up, const Matrix& down, const float* x, int64_t n, float* y) {
  const int64_t width = gate_up.rows / 2;
  RETURN_IF_ERROR(Grow<float>(mlp_gu_, n * 2 * width));
  RETURN_IF_ERROR(Grow<float>(mlp_act_, n * width));
  RETURN_IF_ERROR(Linear(x, n, gate_up.cols, gate_up, mlp_gu_.as<float>(), 2 * width));
  cuda::SiluMulParams s;
  s.gate_up = mlp_gu_.as<float>(), s.rows = n, s.width = width, s.out_f32 = mlp_act_.as<float>();
  RETURN_IF_ERROR(cuda::SiluMul(s, stream_));
  return Linear(mlp_act_.as<float>(), n, width, down, y, down.rows);
}

absl::Status GpuModel::Forward(const ForwardBatch& batch, float* logits, const MoeContext& moe) {
  const ModelConfig& c = config_;
  const int64_t T = static_cast<int64_t>(batch.token_ids.size()), D = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  if (T == 0 && moe.exchanges == nullptr) return absl::OkStatus();
  DAEDALUS_CUDA_RETURN(cudaSetDevice(options_.device));

  // Per-token and per-slice metadata, uploaded in one copy.
  Meta& m = meta_layout_;
  m = Meta{};
  std::vector<int32_t>& h = host_meta_;
  h.clear();
  auto mark = [&]() { return static_cast<int64_t>(h.size()); };
  m.token_ids = mark();
  h.insert(h.end(), batch.token_ids.begin(), batch.token_ids.end());
  std::vector<int32_t> positions(T), kv_pages(T), kv_slots(T);
  for (const SequenceSlice& s : batch.slices) {
    for (int64_t t = 0; t < s.n_tokens; ++t) {
      const int64_t pos = s.start_pos + t;
      positions[s.offset + t] = static_cast<int32_t>(pos);
      kv_pages[s.offset + t] = (*s.pages)[pos / options_.page_size];
      kv_slots[s.offset + t] = static_cast<int32_t>(pos % options_.page_size);
    }
    const bool absorbed = options_.attention == AttentionPath::kAbsorbed ||
                          (options_.attention == AttentionPath::kAuto && s.decode);
    m.slice_absorbed.push_back(absorbed);
    if (absorbed) {
      m.n_abs += s.n_tokens;
      m.max_pages = std::max<int64_t>(m.max_pages, static_cast<int64_t>(s.pages->size()));
      m.max_kv_len = std::max(m.max_kv_len, s.start_pos + s.n_tokens);
    }
  }
  m.positions = mark();
  h.insert(h.end(), positions.begin(), positions.end());
  m.kv_pages = mark();
  h.insert(h.end(), kv_pages.begin(), kv_pages.end());
  m.kv_slots = mark();
  h.insert(h.end(), kv_slots.begin(), kv_slots.end());
  m.abs_rows = mark();
  for (size_t i = 0; i < batch.slices.size(); ++i)
    if (m.slice_absorbed[i])
      for (int64_t t = 0; t < batch.slices[i].n_tokens; ++t) h.push_back(static_cast<int32_t>(batch.slices[i].offset + t));
  m.abs_kv_len = mark();
  for (size_t i = 0; i < batch.slices.size(); ++i)
    if (m.slice_absorbed[i])
      for (int64_t t = 0; t < batch.slices[i].n_tokens; ++t) h.push_back(static_cast<int32_t>(batch.slices[i].start_pos + t + 1));
  m.abs_pages = mark();
  for (size_t i = 0; i < batch.slices.size(); ++i) {
    if (!m.slice_absorbed[i]) continue;
    const auto& pages = *batch.slices[i].pages;
    for (int64_t t = 0; t < batch.slices[i].n_tokens; ++t) {
      h.insert(h.end(), pages.begin(), pages.end());
      h.resize(h.size() + m.max_pages - pages.size(), 0);
    }
  }
  m.slice_pages = mark();
  for (size_t i = 0; i < batch.slices.size(); ++i) {
    m.slice_page_offset.push_back(mark());
    if (!m.slice_absorbed[i]) h.insert(h.end(), batch.slices[i].pages->begin(), batch.slices[i].pages->end());
  }
  m.logit_rows = mark();
  for (int64_t r : batch.logit_rows) h.push_back(static_cast<int32_t>(r));
  RETURN_IF_ERROR(Grow<int32_t>(meta_, mark()));
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(meta_.data(), h.data(), h.size() * 4, cudaMemcpyHostToDevice, stream_));
  const int32_t* meta = meta_.as<int32_t>();

  RETURN_IF_ERROR(Grow<float>(h_, T * D));
  RETURN_IF_ERROR(Grow<float>(x_, T * D));
  RETURN_IF_ERROR(Grow<float>(y_, T * D));
  cuda::EmbeddingParams e;
  e.table = embed_, e.table_bf16 = embed_bf16_, e.token_ids = meta + m.token_ids, e.n_tokens = T, e.hidden = D;
  e.out = h_.as<float>();
  RETURN_IF_ERROR(cuda::Embedding(e, stream_));

  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const Layer& L = layers_[l];
    if (T > 0) {
      RETURN_IF_ERROR(cuda::RmsNorm({h_.as<float>(), L.input_layernorm, x_.as<float>(), T, D, D, D, eps}, stream_));
      RETURN_IF_ERROR(Attention(L, l, batch));
      RETURN_IF_ERROR(cuda::AddInPlace(h_.as<float>(), y_.as<float>(), T * D, stream_));
      RETURN_IF_ERROR(cuda::RmsNorm({h_.as<float>(), L.post_attention_layernorm, x_.as<float>(), T, D, D, D, eps}, stream_));
    }
    if (L.moe) {
      RETURN_IF_ERROR(Moe(L, l, T, moe));
    } else if (T > 0) {
      RETURN_IF_ERROR(Mlp(L.dense_gate_up, L.dense_down, x_.as<float>(), T, y_.as<float>()));
    }
    if (T > 0) RETURN_IF_ERROR(cuda::AddInPlace(h_.as<float>(), y_.as<float>(), T * D, stream_));
  }
  const int64_t R = static_cast<int64_t>(batch.logit_rows.size());
  if (R > 0) {
    RETURN_IF_ERROR(Grow<float>(final_x_, R * D));
    RETURN_IF_ERROR(Grow<float>(logits_, R * c.vocab_size));
    cuda::CopyRowsParams g;
    g.src = h_.as<float>(), g.src_stride = D, g.dst = final_x_.as<float>(), g.dst_stride = D;
    g.rows = meta + m.logit_rows, g.n_rows = R, g.width = D;
    RETURN_IF_ERROR(cuda::CopyRows(g, stream_));
    RETURN_IF_ERROR(cuda::RmsNorm({final_x_.as<float>(), norm_, final_x_.as<float>(), R, D, D, D, eps}, stream_));
    RETURN_IF_ERROR(Linear(final_x_.as<float>(), R, D, lm_head_, logits_.as<float>(), c.vocab_size));
    DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(logits, logits_.data(), static_cast<size_t>(R * c.vocab_size) * 4,
                                         cudaMemcpyDeviceToHost, stream_));
  }
  DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status GpuModel::Attention(const Layer& L, int64_t layer, const ForwardBatch& batch) {
  const ModelConfig& c = config_;
  const int64_t T = static_cast<int64_t>(batch.token_ids.size()), D = c.hidden_size, H = c.num_attention_heads;
  const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim, rkv = c.kv_lora_rank;
  const int64_t qk = dn + dr, dim = c.kv_cache_dim();
  const float eps = static_cast<float>(c.rms_norm_eps), scale = static_cast<float>(c.softmax_scale());
  const Meta& m = meta_layout_;
  const int32_t* meta = meta_.as<int32_t>();
  RETURN_IF_ERROR(Grow<float>(q_, T * H * qk));
  RETURN_IF_ERROR(Grow<float>(kva_, T * dim));
  RETURN_IF_ERROR(Grow<float>(o_, T * H * dv));
  float* q = q_.as<float>();
  float* kva = kva_.as<float>();
  float* o = o_.as<float>();
  const float* x = x_.as<float>();
  if (c.q_lora_rank) {
    const int64_t rq = *c.q_lora_rank;
    RETURN_IF_ERROR(Grow<float>(qa_, T * rq));
    RETURN_IF_ERROR(Linear(x, T, D, L.q_a, qa_.as<float>(), rq));
    RETURN_IF_ERROR(cuda::RmsNorm({qa_.as<float>(), L.q_a_layernorm, qa_.as<float>(), T, rq, rq, rq, eps}, stream_));
    RETURN_IF_ERROR(Linear(qa_.as<float>(), T, rq, L.q_b, q, H * qk));
  } else {
    RETURN_IF_ERROR(Linear(x, T, D, L.q, q, H * qk));
  }
  RETURN_IF_ERROR(Linear(x, T, D, L.kv_a, kva, dim));
  RETURN_IF_ERROR(cuda::RmsNorm({kva, L.kv_a_layernorm, kva, T, rkv, dim, dim, eps}, stream_));
  cuda::RopeParams rope;
  rope.n_tokens = T, rope.dim = dr, rope.positions = meta + m.positions, rope.inv_freq = inv_freq_;
  rope.mscale = rope_.mscale();
  rope.v = kva + rkv, rope.heads = 1, rope.token_stride = dim, rope.head_stride = dim;
  RETURN_IF_ERROR(cuda::RotateInterleaved(rope, stream_));
  rope.v = q + dn, rope.heads = H, rope.token_stride = H * qk, rope.head_stride = qk;
  RETURN_IF_ERROR(cuda::RotateInterleaved(rope, stream_));
  cuda::KvWriteParams kw;
  kw.latent = kva, kw.latent_stride = dim, kw.n_tokens = T, kw.pages = meta + m.kv_pages, kw.slots = meta + m.kv_slots;
  kw.pool = pool_, kw.fp8 = options_.kv_fp8, kw.layer = layer, kw.n_layers = c.num_hidden_layers;
  kw.page_size = options_.page_size, kw.kv_lora_rank = rkv, kw.rope_dim = dr;
  RETURN_IF_ERROR(cuda::KvWrite(kw, stream_));

  if (m.n_abs > 0) {
    const int64_t n = m.n_abs;
    RETURN_IF_ERROR(Grow<float>(q_abs_, n * H * qk));
    RETURN_IF_ERROR(Grow<float>(q_lat_, n * H * rkv));
    RETURN_IF_ERROR(Grow<float>(o_lat_, n * H * rkv));
    RETURN_IF_ERROR(Grow<float>(o_abs_, n * H * dv));
    cuda::CopyRowsParams g;
    g.src = q, g.src_stride = H * qk, g.dst = q_abs_.as<float>(), g.dst_stride = H * qk;
    g.rows = meta + m.abs_rows, g.n_rows = n, g.width = H * qk;
    RETURN_IF_ERROR(cuda::CopyRows(g, stream_));
    // q_latent[h] = q_nope[h] · W_uk[h], W_uk[h] the k_nope rows of kv_b_proj ([dn, rkv]).
    cuda::LinearParams uk;
    uk.x = q_abs_.as<float>(), uk.m = n, uk.k = dn, uk.ldx = H * qk, uk.x_batch_stride = qk;
    uk.w = L.kv_b.w, uk.w_in_out = true, uk.n = rkv, uk.ldw = rkv, uk.w_batch_stride = (dn + dv) * rkv;
    uk.y = q_lat_.as<float>(), uk.ldy = H * rkv, uk.y_batch_stride = rkv, uk.batch = H;
    RETURN_IF_ERROR(cuda::Linear(cublas_, uk, linear_ws_, stream_));
    const cuda::MlaDecodePlan plan =
        cuda::PlanMlaDecode(n, H, rkv, dr, m.max_kv_len, options_.kv_fp8, sm_count_,
                            options_.float_precision ? cuda::MlaDecodeKernel::kCudaCores : cuda::MlaDecodeKernel::kMma);
    RETURN_IF_ERROR(mla_ws_.Reserve(std::max<size_t>(plan.workspace_bytes, 4)));
    cuda::MlaDecodeParams d;
    d.q_latent = q_lat_.as<float>(), d.q_pe = q_abs_.as<float>() + dn, d.q_pe_row_stride = H * qk, d.q_pe_head_stride = qk;
    d.pool = pool_, d.kv_fp8 = options_.kv_fp8, d.layer = layer, d.n_layers = c.num_hidden_layers, d.page_size = options_.page_size;
    d.page_table = meta + m.abs_pages, d.max_pages = m.max_pages, d.kv_len = meta + m.abs_kv_len;
    d.n_rows = n, d.heads = H, d.kv_lora_rank = rkv, d.rope_dim = dr, d.scale = scale;
    d.out = o_lat_.as<float>(), d.workspace = mla_ws_.data();
    RETURN_IF_ERROR(cuda::MlaDecode(d, plan, stream_));
    // o[h] = o_latent[h] · W_uv[h]ᵀ, W_uv[h] the v rows of kv_b_proj ([dv, rkv]).
    cuda::LinearParams uv;
    uv.x = o_lat_.as<float>(), uv.m = n, uv.k = rkv, uv.ldx = H * rkv, uv.x_batch_stride = rkv;
    uv.w = L.kv_b.w + dn * rkv, uv.n = dv, uv.ldw = rkv, uv.w_batch_stride = (dn + dv) * rkv;
    uv.y = o_abs_.as<float>(), uv.ldy = H * dv, uv.y_batch_stride = dv, uv.batch = H;
    RETURN_IF_ERROR(cuda::Linear(cublas_, uv, linear_ws_, stream_));
    g.src = o_abs_.as<float>(), g.src_stride = H * dv, g.dst = o, g.dst_stride = H * dv, g.width = H * dv, g.scatter = true;
    RETURN_IF_ERROR(cuda::CopyRows(g, stream_));
  }
  for (size_t i = 0; i < batch.slices.size(); ++i) {
    if (m.slice_absorbed[i]) continue;
    const SequenceSlice& s = batch.slices[i];
    cuda::MlaPrefillParams p;
    p.q = q + s.offset * H * qk, p.q_row_stride = H * qk, p.n_tokens = s.n_tokens, p.start_pos = s.start_pos;
    p.pool = pool_, p.kv_fp8 = options_.kv_fp8, p.layer = layer, p.n_layers = c.num_hidden_layers, p.page_size = options_.page_size;
    p.pages = meta + m.slice_page_offset[i], p.kv_b_proj = L.kv_b.w;
    p.heads = H, p.qk_nope = dn, p.rope = dr, p.v_head = dv, p.kv_lora_rank = rkv, p.scale = scale;
    p.out = o + s.offset * H * dv, p.out_row_stride = H * dv;
    RETURN_IF_ERROR(cuda::MlaPrefill(cublas_, p, prefill_ws_, stream_));
  }
  return Linear(o, T, H * dv, L.o, y_.as<float>(), D);
}

absl::Status GpuModel::Moe(const Layer& L, int64_t layer, int64_t T, const MoeContext& moe) {
  const ModelConfig& c = config_;
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const std::string what = absl::StrCat("layer ", layer, " step ", moe.step);
  ExpertExchange* exchange = moe.exchanges != nullptr ? (*moe.exchanges)[layer].get() : nullptr;
  std::vector<int64_t>* load = moe.load != nullptr ? &(*moe.load)[layer] : nullptr;
  RETURN_IF_ERROR(Grow<float>(gate_logits_, T * E));
  RETURN_IF_ERROR(Grow<int32_t>(expert_ids_, T * K));
  RETURN_IF_ERROR(Grow<float>(expert_weights_, T * K));
  RETURN_IF_ERROR(Grow<float>(shared_out_, T * D));
  if (T > 0) {
    RETURN_IF_ERROR(Linear(x_.as<float>(), T, D, L.gate, gate_logits_.as<float>(), E));
    const GateParams g = GateParams::FromConfig(c);
    cuda::GateParams r;
    r.logits = gate_logits_.as<float>(), r.bias = L.bias, r.n_tokens = T, r.n_routed_experts = E;
    r.num_experts_per_tok = K, r.n_group = g.n_group, r.topk_group = g.topk_group, r.sigmoid = g.sigmoid;
    r.group_top2_sum = g.group_top2_sum, r.norm_topk_prob = g.norm_topk_prob;
    r.routed_scaling_factor = g.routed_scaling_factor;
    r.expert_ids = expert_ids_.as<int32_t>(), r.weights = expert_weights_.as<float>();
    RETURN_IF_ERROR(cuda::Route(r, stream_));
    if (L.has_shared) RETURN_IF_ERROR(Mlp(L.shared_gate_up, L.shared_down, x_.as<float>(), T, shared_out_.as<float>()));
  }
  cuda::ExpertFfnParams f;
  f.n_experts = E, f.w_gate_up = L.expert_gate_up.data(), f.w_down = L.expert_down.data();
  f.hidden = D, f.inter = c.moe_intermediate_size, f.mode = options_.expert_gemm;
  const bool split = options_.float_precision;

  if (exchange == nullptr) {
    if (T == 0) return absl::OkStatus();
    RETURN_IF_ERROR(Grow<int64_t>(group_begin_, E + 1));
    RETURN_IF_ERROR(Grow<int32_t>(row_of_slot_, T * K));
    RETURN_IF_ERROR(Grow<uint16_t>(x_grouped_, T * K * D));
    if (split) RETURN_IF_ERROR(Grow<uint16_t>(x_grouped_lo_, T * K * D));
    RETURN_IF_ERROR(Grow<float>(y_grouped_, T * K * D));
    RETURN_IF_ERROR(Grow<int32_t>(permute_scratch_, T * K + E));
    cuda::PermuteParams p;
    p.expert_ids = expert_ids_.as<int32_t>(), p.n_tokens = T, p.topk = K, p.n_experts = E, p.x = x_.as<float>();
    p.hidden = D, p.group_begin = group_begin_.as<int64_t>(), p.row_of_slot = row_of_slot_.as<int32_t>();
    p.x_grouped = x_grouped_.as<uint16_t>(), p.scratch = permute_scratch_.as<int32_t>();
    p.x_grouped_lo = split ? x_grouped_lo_.as<uint16_t>() : nullptr;
    RETURN_IF_ERROR(cuda::Permute(p, stream_));
    host_group_begin_.resize(E + 1);
    DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(host_group_begin_.data(), group_begin_.data(), (E + 1) * sizeof(int64_t),
                                         cudaMemcpyDeviceToHost, stream_));
    DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));  // the GEMMs' group sizes are host arguments
    if (load != nullptr) {
      load->resize(E, 0);
      for (int64_t x = 0; x < E; ++x) (*load)[x] += host_group_begin_[x + 1] - host_group_begin_[x];
    }
    f.x = x_grouped_.as<uint16_t>(), f.group_begin = host_group_begin_.data(), f.y = y_grouped_.as<float>();
    f.x_lo = split ? x_grouped_lo_.as<uint16_t>() : nullptr;
    RETURN_IF_ERROR(cuda::ExpertFfn(cublas_, f, ffn_ws_, stream_));
    cuda::UnpermuteParams u;
    u.y_grouped = y_grouped_.as<float>(), u.row_of_slot = row_of_slot_.as<int32_t>();
    u.weights = expert_weights_.as<float>(), u.shared = L.has_shared ? shared_out_.as<float>() : nullptr;
    u.n_tokens = T, u.topk = K, u.hidden = D, u.out = y_.as<float>();
    return cuda::Unpermute(u, stream_);
  }

  // Expert parallelism: the exchange moves host rows, so stage through host memory. The
  // combine sums each token's slots in slot order on the host, as MoeForward does.
  FloatBuffer x_host(T * D), shared_host(T * D), weights(T * K);
  std::vector<int32_t> ids(T * K);
  if (T > 0) {
    DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(x_host.data(), x_.data(), T * D * 4, cudaMemcpyDeviceToHost, stream_));
    DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(ids.data(), expert_ids_.data(), T * K * 4, cudaMemcpyDeviceToHost, stream_));
    DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(weights.data(), expert_weights_.data(), T * K * 4, cudaMemcpyDeviceToHost, stream_));
    if (L.has_shared) {
      DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(shared_host.data(), shared_out_.data(), T * D * 4, cudaMemcpyDeviceToHost, stream_));
    }
    DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));
  }
  if (load != nullptr) {
    load->resize(E, 0);
    for (int32_t id : ids) ++(*load)[id];
  }
  ReceivedRows rows;
  RETURN_IF_ERROR(exchange->Dispatch(x_host.data(), T, K, ids.data(), what, rows));
  const int64_t R = rows.rows();
  FloatBuffer packed(R * D), out(R * D);
  for (int64_t i = 0; i < R; ++i) std::memcpy(&packed[i * D], rows.x[i], D * 4);
  if (R > 0) {
    RETURN_IF_ERROR(Grow<float>(y_grouped_, R * D));
    RETURN_IF_ERROR(Grow<uint16_t>(x_grouped_, R * D));
    if (split) RETURN_IF_ERROR(Grow<uint16_t>(x_grouped_lo_, R * D));
    DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(y_grouped_.data(), packed.data(), R * D * 4, cudaMemcpyHostToDevice, stream_));
    RETURN_IF_ERROR(cuda::ToBf16Split(y_grouped_.as<float>(), x_grouped_.as<uint16_t>(),
                                      split ? x_grouped_lo_.as<uint16_t>() : nullptr, R * D, stream_));
    f.x = x_grouped_.as<uint16_t>(), f.group_begin = rows.expert_begin.data(), f.y = y_grouped_.as<float>();
    f.x_lo = split ? x_grouped_lo_.as<uint16_t>() : nullptr;
    RETURN_IF_ERROR(cuda::ExpertFfn(cublas_, f, ffn_ws_, stream_));
    DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(out.data(), y_grouped_.data(), R * D * 4, cudaMemcpyDeviceToHost, stream_));
    DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));
  }
  std::vector<float*> out_rows = exchange->CombineOutputs(rows);
  for (int64_t i = 0; i < R; ++i) std::memcpy(out_rows[i], &out[i * D], D * 4);
  std::vector<const float*> slot_rows(T * K);
  RETURN_IF_ERROR(exchange->Combine(what, slot_rows));
  if (T == 0) return absl::OkStatus();
  FloatBuffer y(T * D, 0.0f);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) Axpy(weights[t * K + k], slot_rows[t * K + k], &y[t * D], D);
    if (L.has_shared)
      for (int64_t i = 0; i < D; ++i) y[t * D + i] += shared_host[t * D + i];
  }
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(y_.data(), y.data(), T * D * 4, cudaMemcpyHostToDevice, stream_));
  DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));  // before the host buffer goes
  return absl::OkStatus();
}

}  // namespace daedalus
