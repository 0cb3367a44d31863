// CudaBackend's ops: each a few kernels of kernels/cuda/ on the backend's stream.
#include "worker/cuda/cuda_backend.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/buffer.h"
#include "core/status.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gate.h"
#include "kernels/cuda/kv_write.h"
#include "kernels/cuda/mla_decode.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/silu_mul.h"
#include "kernels/ops.h"
#include "routing/gate.h"
#include "worker/cpu_backend.h"

namespace daedalus {

namespace {

template <typename T>
absl::Status Grow(cuda::DeviceBuffer& b, int64_t n) {
  return b.Reserve(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T));
}

}  // namespace

absl::StatusOr<void*> CudaBackend::Reserve(Buffer which, size_t bytes) {
  cuda::DeviceBuffer& b = buffers_[static_cast<size_t>(which)];
  RETURN_IF_ERROR(b.Reserve(std::max<size_t>(bytes, 4)));
  return b.data();
}

absl::StatusOr<const void*> CudaBackend::ToHost(Buffer which, size_t bytes) {
  if (bytes > buffers_[static_cast<size_t>(which)].bytes())
    return absl::InvalidArgumentError(absl::StrCat("ToHost: ", bytes, " bytes asked of activation buffer ",
                                                   static_cast<int>(which), ", which holds ",
                                                   buffers_[static_cast<size_t>(which)].bytes()));
  std::vector<uint8_t>& host = host_[static_cast<size_t>(which)];
  host.resize(std::max<size_t>(bytes, 4));
  if (bytes > 0) {
    DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(host.data(), buffers_[static_cast<size_t>(which)].data(), bytes,
                                         cudaMemcpyDeviceToHost, stream_));
    DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));
  }
  return static_cast<const void*>(host.data());
}

absl::Status CudaBackend::Upload(Buffer which, const void* host, size_t bytes) {
  ASSIGN_OR_RETURN(void* p, Reserve(which, bytes));
  if (bytes > 0) {
    DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(p, host, bytes, cudaMemcpyHostToDevice, stream_));
    DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));  // the caller's memory may go
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Wait() {
  DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

// Per-token and per-slice metadata, uploaded in one copy.
absl::Status CudaBackend::Begin(const ForwardBatch& batch, const std::vector<bool>& absorbed) {
  if (absorbed.size() != batch.slices.size())
    return absl::InvalidArgumentError(absl::StrCat("Begin: ", absorbed.size(), " absorbed flags for ",
                                                   batch.slices.size(), " slices"));
  DAEDALUS_CUDA_RETURN(cudaSetDevice(options_.device));
  batch_ = &batch;
  const int64_t T = static_cast<int64_t>(batch.token_ids.size());
  Meta& m = meta_layout_;
  m = Meta{};
  m.n_tokens = T;
  m.slice_absorbed = absorbed;
  std::vector<int32_t>& h = host_meta_;
  h.clear();
  auto mark = [&]() { return static_cast<int64_t>(h.size()); };
  m.token_ids = mark();
  h.insert(h.end(), batch.token_ids.begin(), batch.token_ids.end());
  std::vector<int32_t> positions(T), kv_pages(T), kv_slots(T);
  for (size_t i = 0; i < batch.slices.size(); ++i) {
    const SequenceSlice& s = batch.slices[i];
    for (int64_t t = 0; t < s.n_tokens; ++t) {
      const int64_t pos = s.start_pos + t;
      positions[s.offset + t] = static_cast<int32_t>(pos);
      kv_pages[s.offset + t] = (*s.pages)[pos / options_.page_size];
      kv_slots[s.offset + t] = static_cast<int32_t>(pos % options_.page_size);
    }
    if (absorbed[i]) {
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
    if (absorbed[i])
      for (int64_t t = 0; t < batch.slices[i].n_tokens; ++t) h.push_back(static_cast<int32_t>(batch.slices[i].offset + t));
  m.abs_kv_len = mark();
  for (size_t i = 0; i < batch.slices.size(); ++i)
    if (absorbed[i])
      for (int64_t t = 0; t < batch.slices[i].n_tokens; ++t) h.push_back(static_cast<int32_t>(batch.slices[i].start_pos + t + 1));
  m.abs_pages = mark();
  for (size_t i = 0; i < batch.slices.size(); ++i) {
    if (!absorbed[i]) continue;
    const auto& pages = *batch.slices[i].pages;
    for (int64_t t = 0; t < batch.slices[i].n_tokens; ++t) {
      h.insert(h.end(), pages.begin(), pages.end());
      h.resize(h.size() + m.max_pages - pages.size(), 0);
    }
  }
  m.slice_pages = mark();
  for (size_t i = 0; i < batch.slices.size(); ++i) {
    m.slice_page_offset.push_back(mark());
    if (!absorbed[i]) h.insert(h.end(), batch.slices[i].pages->begin(), batch.slices[i].pages->end());
  }
  m.logit_rows = mark();
  for (int64_t r : batch.logit_rows) h.push_back(static_cast<int32_t>(r));
  RETURN_IF_ERROR(Grow<int32_t>(meta_, mark()));
  if (!h.empty()) DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(meta_.data(), h.data(), h.size() * 4, cudaMemcpyHostToDevice, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::Embed(const WeightView& table, float* out) {
  if (&table != &weights_.embed_tokens) return absl::InternalError("CudaBackend: an embedding that was not uploaded");
  cuda::EmbeddingParams e;
  e.table = embed_, e.table_bf16 = embed_bf16_, e.token_ids = meta_.as<int32_t>() + meta_layout_.token_ids;
  e.n_tokens = meta_layout_.n_tokens, e.hidden = config_.hidden_size, e.out = out;
  return cuda::Embedding(e, stream_);
}

absl::Status CudaBackend::RmsNorm(const RmsNormOp& op) {
  ASSIGN_OR_RETURN(const float* gamma, DeviceFloats(op.gamma));
  return cuda::RmsNorm({op.x, gamma, op.y, op.rows, op.n, op.x_stride, op.y_stride, static_cast<float>(config_.rms_norm_eps)},
                       stream_);
}

absl::Status CudaBackend::Add(float* y, const float* x, int64_t n) { return cuda::AddInPlace(y, x, n, stream_); }

absl::Status CudaBackend::Product(const float* x, int64_t m, int64_t ldx, const Matrix& w, float* y, int64_t ldy) {
  cuda::LinearParams p;
  p.x = x, p.m = m, p.k = w.cols, p.ldx = ldx;
  p.w = w.w, p.n = w.rows, p.ldw = w.cols;
  p.y = y, p.ldy = ldy;
  return cuda::Linear(cublas_, p, linear_ws_, stream_);
}

absl::Status CudaBackend::Linear(const LinearOp* ops, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(const Matrix w, DeviceMatrix(ops[i].w));
    RETURN_IF_ERROR(Product(ops[i].x, ops[i].m, w.cols, w, ops[i].y, w.rows));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Rope(const RopeOp& op) {
  cuda::RopeParams rope;
  rope.n_tokens = meta_layout_.n_tokens, rope.dim = config_.qk_rope_head_dim;
  rope.positions = meta_.as<int32_t>() + meta_layout_.positions, rope.inv_freq = inv_freq_, rope.mscale = rope_.mscale();
  rope.v = op.v, rope.heads = op.heads, rope.token_stride = op.token_stride, rope.head_stride = op.head_stride;
  return cuda::RotateInterleaved(rope, stream_);
}

absl::Status CudaBackend::KvWrite(int64_t layer, const float* latent) {
  const int32_t* meta = meta_.as<int32_t>();
  cuda::KvWriteParams kw;
  kw.latent = latent, kw.latent_stride = config_.kv_cache_dim(), kw.n_tokens = meta_layout_.n_tokens;
  kw.pages = meta + meta_layout_.kv_pages, kw.slots = meta + meta_layout_.kv_slots;
  kw.pool = pool_, kw.fp8 = options_.kv_fp8, kw.layer = layer, kw.n_layers = config_.num_hidden_layers;
  kw.page_size = options_.page_size, kw.kv_lora_rank = config_.kv_lora_rank, kw.rope_dim = config_.qk_rope_head_dim;
  return cuda::KvWrite(kw, stream_);
}

absl::Status CudaBackend::MlaAbsorbed(const MlaOp& op) {
  const ModelConfig& c = config_;
  const int64_t H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  const int64_t rkv = c.kv_lora_rank, qk = dn + dr;
  const Meta& m = meta_layout_;
  const int32_t* meta = meta_.as<int32_t>();
  const int64_t n = m.n_abs;
  if (n == 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(const Matrix kv_b, DeviceMatrix(&op.w->kv_b_proj));
  RETURN_IF_ERROR(Grow<float>(q_abs_, n * H * qk));
  RETURN_IF_ERROR(Grow<float>(q_lat_, n * H * rkv));
  RETURN_IF_ERROR(Grow<float>(o_lat_, n * H * rkv));
  RETURN_IF_ERROR(Grow<float>(o_abs_, n * H * dv));
  cuda::CopyRowsParams g;
  g.src = op.q, g.src_stride = H * qk, g.dst = q_abs_.as<float>(), g.dst_stride = H * qk;
  g.rows = meta + m.abs_rows, g.n_rows = n, g.width = H * qk;
  RETURN_IF_ERROR(cuda::CopyRows(g, stream_));
  // q_latent[h] = q_nope[h] · W_uk[h], W_uk[h] the k_nope rows of kv_b_proj ([dn, rkv]).
  cuda::LinearParams uk;
  uk.x = q_abs_.as<float>(), uk.m = n, uk.k = dn, uk.ldx = H * qk, uk.x_batch_stride = qk;
  uk.w = kv_b.w, uk.w_in_out = true, uk.n = rkv, uk.ldw = rkv, uk.w_batch_stride = (dn + dv) * rkv;
  uk.y = q_lat_.as<float>(), uk.ldy = H * rkv, uk.y_batch_stride = rkv, uk.batch = H;
  RETURN_IF_ERROR(cuda::Linear(cublas_, uk, linear_ws_, stream_));
  const cuda::MlaDecodePlan plan =
      cuda::PlanMlaDecode(n, H, rkv, dr, m.max_kv_len, options_.kv_fp8, sm_count_,
                          options_.float_precision ? cuda::MlaDecodeKernel::kCudaCores : cuda::MlaDecodeKernel::kMma);
  RETURN_IF_ERROR(mla_ws_.Reserve(std::max<size_t>(plan.workspace_bytes, 4)));
  cuda::MlaDecodeParams d;
  d.q_latent = q_lat_.as<float>(), d.q_pe = q_abs_.as<float>() + dn, d.q_pe_row_stride = H * qk, d.q_pe_head_stride = qk;
  d.pool = pool_, d.kv_fp8 = options_.kv_fp8, d.layer = op.layer, d.n_layers = c.num_hidden_layers;
  d.page_size = options_.page_size;
  d.page_table = meta + m.abs_pages, d.max_pages = m.max_pages, d.kv_len = meta + m.abs_kv_len;
  d.n_rows = n, d.heads = H, d.kv_lora_rank = rkv, d.rope_dim = dr, d.scale = static_cast<float>(c.softmax_scale());
  d.out = o_lat_.as<float>(), d.workspace = mla_ws_.data();
  RETURN_IF_ERROR(cuda::MlaDecode(d, plan, stream_));
  // o[h] = o_latent[h] · W_uv[h]ᵀ, W_uv[h] the v rows of kv_b_proj ([dv, rkv]).
  cuda::LinearParams uv;
  uv.x = o_lat_.as<float>(), uv.m = n, uv.k = rkv, uv.ldx = H * rkv, uv.x_batch_stride = rkv;
  uv.w = kv_b.w + dn * rkv, uv.n = dv, uv.ldw = rkv, uv.w_batch_stride = (dn + dv) * rkv;
  uv.y = o_abs_.as<float>(), uv.ldy = H * dv, uv.y_batch_stride = dv, uv.batch = H;
  RETURN_IF_ERROR(cuda::Linear(cublas_, uv, linear_ws_, stream_));
  g.src = o_abs_.as<float>(), g.src_stride = H * dv, g.dst = op.o, g.dst_stride = H * dv, g.width = H * dv;
  g.scatter = true;
  return cuda::CopyRows(g, stream_);
}

absl::Status CudaBackend::MlaNaive(const MlaOp& op) {
  const ModelConfig& c = config_;
  const int64_t H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  const int64_t qk = dn + dr;
  const Meta& m = meta_layout_;
  ASSIGN_OR_RETURN(const Matrix kv_b, DeviceMatrix(&op.w->kv_b_proj));
  for (size_t i = 0; i < batch_->slices.size(); ++i) {
    if (m.slice_absorbed[i]) continue;
    const SequenceSlice& s = batch_->slices[i];
    cuda::MlaPrefillParams p;
    p.q = op.q + s.offset * H * qk, p.q_row_stride = H * qk, p.n_tokens = s.n_tokens, p.start_pos = s.start_pos;
    p.pool = pool_, p.kv_fp8 = options_.kv_fp8, p.layer = op.layer, p.n_layers = c.num_hidden_layers;
    p.page_size = options_.page_size, p.pages = meta_.as<int32_t>() + m.slice_page_offset[i], p.kv_b_proj = kv_b.w;
    p.heads = H, p.qk_nope = dn, p.rope = dr, p.v_head = dv, p.kv_lora_rank = c.kv_lora_rank;
    p.scale = static_cast<float>(c.softmax_scale());
    p.out = op.o + s.offset * H * dv, p.out_row_stride = H * dv;
    RETURN_IF_ERROR(cuda::MlaPrefill(cublas_, p, prefill_ws_, stream_));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Route(const RouteOp& op) {
  const GateParams g = GateParams::FromConfig(config_);
  cuda::GateParams r;
  if (!op.bias->empty()) {
    ASSIGN_OR_RETURN(r.bias, DeviceFloats(op.bias));
  }
  r.logits = op.logits, r.n_tokens = op.n_tokens, r.n_routed_experts = config_.n_routed_experts;
  r.num_experts_per_tok = config_.num_experts_per_tok, r.n_group = g.n_group, r.topk_group = g.topk_group;
  r.sigmoid = g.sigmoid, r.group_top2_sum = g.group_top2_sum, r.norm_topk_prob = g.norm_topk_prob;
  r.routed_scaling_factor = g.routed_scaling_factor;
  r.expert_ids = op.expert_ids, r.weights = op.weights;
  return cuda::Route(r, stream_);
}

absl::Status CudaBackend::RunMlp(const GateUpDown& w, const float* x, int64_t n, float* y) {
  const int64_t width = w.gate_up.rows / 2;
  RETURN_IF_ERROR(Grow<float>(mlp_gu_, n * 2 * width));
  RETURN_IF_ERROR(Grow<float>(mlp_act_, n * width));
  RETURN_IF_ERROR(Product(x, n, w.gate_up.cols, w.gate_up, mlp_gu_.as<float>(), 2 * width));
  cuda::SiluMulParams s;
  s.gate_up = mlp_gu_.as<float>(), s.rows = n, s.width = width, s.out_f32 = mlp_act_.as<float>();
  RETURN_IF_ERROR(cuda::SiluMul(s, stream_));
  return Product(mlp_act_.as<float>(), n, width, w.down, y, w.down.rows);
}

absl::Status CudaBackend::Mlp(const MlpOp& op) {
  ASSIGN_OR_RETURN(const GateUpDown* w, DeviceMlp(op.w));
  return RunMlp(*w, op.x, op.n_tokens, op.y);
}

absl::Status CudaBackend::SharedExperts(const LayerWeights& w, const float* x, int64_t n, float* shared_out) {
  if (!w.shared_experts || n == 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(const GateUpDown* shared, DeviceMlp(&*w.shared_experts));
  return RunMlp(*shared, x, n, shared_out);
}

// The layer's routed experts over the rows grouped in x_grouped_ (and x_grouped_lo_ at float
// precision), expert e's rows [group_begin[e], group_begin[e + 1]), into y_grouped_.
absl::Status CudaBackend::GroupedExperts(const LayerWeights& w, const int64_t* group_begin) {
  const auto routed = routed_.find(&w);
  if (routed == routed_.end()) return absl::InternalError("CudaBackend: a MoE layer that was not uploaded");
  cuda::ExpertFfnParams f;
  f.n_experts = config_.n_routed_experts, f.w_gate_up = routed->second.gate_up.data();
  f.w_down = routed->second.down.data();
  f.hidden = config_.hidden_size, f.inter = config_.moe_intermediate_size, f.mode = options_.expert_gemm;
  f.x = x_grouped_.as<uint16_t>(), f.group_begin = group_begin, f.y = y_grouped_.as<float>();
  f.x_lo = options_.float_precision ? x_grouped_lo_.as<uint16_t>() : nullptr;
  return cuda::ExpertFfn(cublas_, f, ffn_ws_, stream_);
}

absl::Status CudaBackend::LocalExperts(const LocalExpertsOp& op) {
  const ModelConfig& c = config_;
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok, T = op.n_tokens;
  const bool split = options_.float_precision;
  RETURN_IF_ERROR(Grow<float>(shared_out_, T * D));
  RETURN_IF_ERROR(SharedExperts(*op.w, op.x, T, shared_out_.as<float>()));
  RETURN_IF_ERROR(Grow<int64_t>(group_begin_, E + 1));
  RETURN_IF_ERROR(Grow<int32_t>(row_of_slot_, T * K));
  RETURN_IF_ERROR(Grow<uint16_t>(x_grouped_, T * K * D));
  if (split) RETURN_IF_ERROR(Grow<uint16_t>(x_grouped_lo_, T * K * D));
  RETURN_IF_ERROR(Grow<float>(y_grouped_, T * K * D));
  RETURN_IF_ERROR(Grow<int32_t>(permute_scratch_, T * K + E));
  cuda::PermuteParams p;
  p.expert_ids = op.expert_ids, p.n_tokens = T, p.topk = K, p.n_experts = E, p.x = op.x;
  p.hidden = D, p.group_begin = group_begin_.as<int64_t>(), p.row_of_slot = row_of_slot_.as<int32_t>();
  p.x_grouped = x_grouped_.as<uint16_t>(), p.scratch = permute_scratch_.as<int32_t>();
  p.x_grouped_lo = split ? x_grouped_lo_.as<uint16_t>() : nullptr;
  RETURN_IF_ERROR(cuda::Permute(p, stream_));
  host_group_begin_.resize(E + 1);
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(host_group_begin_.data(), group_begin_.data(), (E + 1) * sizeof(int64_t),
                                       cudaMemcpyDeviceToHost, stream_));
  DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));  // the GEMMs' group sizes are host arguments
  if (op.load != nullptr) {
    op.load->resize(E, 0);
    for (int64_t x = 0; x < E; ++x) (*op.load)[x] += host_group_begin_[x + 1] - host_group_begin_[x];
  }
  RETURN_IF_ERROR(GroupedExperts(*op.w, host_group_begin_.data()));
  cuda::UnpermuteParams u;
  u.y_grouped = y_grouped_.as<float>(), u.row_of_slot = row_of_slot_.as<int32_t>();
  u.weights = op.weights, u.shared = op.w->shared_experts ? shared_out_.as<float>() : nullptr;
  u.n_tokens = T, u.topk = K, u.hidden = D, u.out = op.out;
  return cuda::Unpermute(u, stream_);
}

// The exchange's rows are host memory: packed, uploaded, through the grouped FFN, and back.
absl::Status CudaBackend::ExpertRows(const ExpertRowsOp& op) {
  const ModelConfig& c = config_;
  const int64_t D = c.hidden_size;
  if (op.shared_out != nullptr) RETURN_IF_ERROR(SharedExperts(*op.w, op.x, op.n_tokens, op.shared_out));
  const ReceivedRows& rows = *op.rows;
  const int64_t R = rows.rows();
  if (R == 0) return absl::OkStatus();
  const bool split = options_.float_precision;
  FloatBuffer packed(R * D), out(R * D);
  for (int64_t i = 0; i < R; ++i) std::memcpy(&packed[i * D], rows.x[i], D * 4);
  RETURN_IF_ERROR(Grow<float>(y_grouped_, R * D));
  RETURN_IF_ERROR(Grow<uint16_t>(x_grouped_, R * D));
  if (split) RETURN_IF_ERROR(Grow<uint16_t>(x_grouped_lo_, R * D));
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(y_grouped_.data(), packed.data(), R * D * 4, cudaMemcpyHostToDevice, stream_));
  RETURN_IF_ERROR(cuda::ToBf16Split(y_grouped_.as<float>(), x_grouped_.as<uint16_t>(),
                                    split ? x_grouped_lo_.as<uint16_t>() : nullptr, R * D, stream_));
  RETURN_IF_ERROR(GroupedExperts(*op.w, rows.expert_begin.data()));
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(out.data(), y_grouped_.data(), R * D * 4, cudaMemcpyDeviceToHost, stream_));
  DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));
  for (int64_t i = 0; i < R; ++i) std::memcpy((*op.out_rows)[i], &out[i * D], D * 4);
  return absl::OkStatus();
}

// The combine sums on the host, in slot order, as the CPU does (SumSlots).
absl::Status CudaBackend::Combine(const CombineOp& op) {
  const ModelConfig& c = config_;
  const int64_t D = c.hidden_size, K = c.num_experts_per_tok, T = op.n_tokens;
  if (T == 0) return absl::OkStatus();
  FloatBuffer weights(T * K), shared(op.shared != nullptr ? T * D : 0), y(T * D);
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(weights.data(), op.weights, T * K * 4, cudaMemcpyDeviceToHost, stream_));
  if (op.shared != nullptr) {
    DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(shared.data(), op.shared, T * D * 4, cudaMemcpyDeviceToHost, stream_));
  }
  DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));
  SumSlots(op.slot_rows->data(), weights.data(), op.shared != nullptr ? shared.data() : nullptr, T, K, D, y.data());
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(op.out, y.data(), T * D * 4, cudaMemcpyHostToDevice, stream_));
  DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));  // before the host buffer goes
  return absl::OkStatus();
}

absl::Status CudaBackend::LogitRows(const float* x, float* y) {
  const int64_t D = config_.hidden_size;
  cuda::CopyRowsParams g;
  g.src = x, g.src_stride = D, g.dst = y, g.dst_stride = D;
  g.rows = meta_.as<int32_t>() + meta_layout_.logit_rows;
  g.n_rows = static_cast<int64_t>(batch_->logit_rows.size()), g.width = D;
  return cuda::CopyRows(g, stream_);
}

absl::Status CudaBackend::Logits(const float* hidden, const std::vector<float>& norm, const WeightView& lm_head,
                                 float* logits) {
  const ModelConfig& c = config_;
  const int64_t D = c.hidden_size, R = static_cast<int64_t>(batch_->logit_rows.size());
  ASSIGN_OR_RETURN(const float* gamma, DeviceFloats(&norm));
  ASSIGN_OR_RETURN(const Matrix head, DeviceMatrix(&lm_head));
  RETURN_IF_ERROR(Grow<float>(final_x_, R * D));
  RETURN_IF_ERROR(Grow<float>(logits_, R * head.rows));
  RETURN_IF_ERROR(cuda::RmsNorm({hidden, gamma, final_x_.as<float>(), R, D, D, D,
                                 static_cast<float>(c.rms_norm_eps)}, stream_));
  RETURN_IF_ERROR(Product(final_x_.as<float>(), R, D, head, logits_.as<float>(), head.rows));
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(logits, logits_.data(), static_cast<size_t>(R * head.rows) * 4,
                                       cudaMemcpyDeviceToHost, stream_));
  DAEDALUS_CUDA_RETURN(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

}  // namespace daedalus
