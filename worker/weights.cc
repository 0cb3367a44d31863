#include "worker/weights.h"

#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace daedalus {
namespace {

class Loader {
 public:
  // Copies it makes (packed weights, scales) go to `owned`.
  Loader(const Checkpoint& ckpt, std::vector<WeightBuffer>& owned) : ckpt_(ckpt), owned_(owned) {}

  absl::StatusOr<const TensorInfo*> Tensor(const std::string& name, const std::vector<int64_t>& shape) {
    ASSIGN_OR_RETURN(const TensorInfo* t, ckpt_.Get(name));
    if (t->shape != shape) {
      TensorInfo expected;
      expected.shape = shape;
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " in ", t->file, ": expected shape ",
                                                     expected.ShapeString(), ", found ", t->ShapeString()));
    }
    return t;
  }

  // A 1-D float vector (norm weights, correction bias) of any stored dtype.
  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int64_t n) {
    ASSIGN_OR_RETURN(const TensorInfo* t, Tensor(name, {n}));
    std::vector<float> out(n);
    for (int64_t i = 0; i < n; ++i) {
      if (t->dtype == DType::kF32) std::memcpy(&out[i], t->data + 4 * i, 4);
      else if (t->dtype == DType::kBF16) out[i] = Bf16ToF32(static_cast<bf16>(t->data[2 * i] | (t->data[2 * i + 1] << 8)));
      else return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " in ", t->file, ": dtype F8_E4M3 is only supported for 2-D projections"));
    }
    return out;
  }

  // A 2-D projection [rows, cols], repacked into the kernels' panel layout (owned; the mmapped
  // bytes are then dropped from memory). FP8 tensors need `<name>_scale_inv` and stay FP8:
  // half the bytes of BF16 to store and to stream at decode.
  absl::StatusOr<WeightView> Matrix(const std::string& name, int64_t rows, int64_t cols) {
    ASSIGN_OR_RETURN(WeightView w, Raw(name, rows, cols));
    if (w.dtype == DType::kF32) return w;
    if (w.dtype == DType::kF8E4M3) {
      ASSIGN_OR_RETURN(w.scale_inv, Scales(name, rows, cols));
    }
    if (w.dtype == DType::kF8E4M3 && !FitsFp8Kernel(w.scale_inv, ScaleCount(rows, cols))) {
      // Scales of 2^7 or more would overflow the kernel's folded 2^120: widen to BF16 instead.
      std::vector<bf16> widened(static_cast<size_t>(rows * cols));
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) widened[r * cols + c] = F32ToBf16(w.at(r, c));
      w = Pack(WeightView{DType::kBF16, rows, cols, widened.data()});
    } else {
      w = Pack(w);
    }
    (*ckpt_.Get(name))->ReleaseResidentPages();
    return w;
  }

  // The tensor as stored, checked for shape.
  absl::StatusOr<WeightView> Raw(const std::string& name, int64_t rows, int64_t cols) {
    ASSIGN_OR_RETURN(const TensorInfo* t, Tensor(name, {rows, cols}));
    return WeightView{t->dtype, rows, cols, t->data};
  }

  // The panel-layout copy of a BF16 or FP8 weight; `data` no longer points anywhere.
  WeightView Pack(WeightView w) {
    return PackInto(w, owned_.emplace_back(PackedElements(w.rows, w.cols) * DTypeSize(w.dtype)).data());
  }
  // The same into `at`, room for PackedElements(rows, cols) weights the loader owns elsewhere.
  static WeightView PackInto(WeightView w, uint8_t* at) {
    if (w.dtype == DType::kBF16) PackBf16(w, reinterpret_cast<bf16*>(at));
    else PackFp8(w, at);
    w.packed = at;
    w.data = nullptr;
    return w;
  }

  static int64_t ScaleCount(int64_t rows, int64_t cols) {
    return Fp8ScaleBlocks(rows) * Fp8ScaleBlocks(cols);
  }

  // `<name>_scale_inv`: F32 [ceil(rows/128), ceil(cols/128)], copied (owned, aligned).
  absl::StatusOr<const float*> Scales(const std::string& name, int64_t rows, int64_t cols) {
    const std::string scale_name = name.substr(0, name.size() - std::string("weight").size()) + "weight_scale_inv";
    ASSIGN_OR_RETURN(const TensorInfo* s,
                     Tensor(scale_name, {Fp8ScaleBlocks(rows), Fp8ScaleBlocks(cols)}));
    if (s->dtype != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", scale_name, " in ", s->file, ": expected dtype F32, found ",
                                                     DTypeName(s->dtype), " (block scales of ", name, ")"));
    }
    WeightBuffer& buf = owned_.emplace_back(s->nbytes);
    std::memcpy(buf.data(), s->data, s->nbytes);
    return reinterpret_cast<const float*>(buf.data());
  }

  absl::StatusOr<MlpWeights> Mlp(const std::string& prefix, int64_t hidden, int64_t width) {
    MlpWeights m;
    ASSIGN_OR_RETURN(m.gate_proj, Matrix(prefix + "gate_proj.weight", width, hidden));
    ASSIGN_OR_RETURN(m.up_proj, Matrix(prefix + "up_proj.weight", width, hidden));
    ASSIGN_OR_RETURN(m.down_proj, Matrix(prefix + "down_proj.weight", hidden, width));
    return m;
  }

  // Splits kv_b_proj per head into the absorbed-decode weights (copies, in kv_b_proj's dtype):
  // every head's W_uk transposed in one buffer, head after head, and every head's W_uv in
  // another, so that a thread's heads stream as one run of memory.
  void Absorb(AttentionWeights& a, const ModelConfig& c) {
    const int64_t dn = c.qk_nope_head_dim, dv = c.v_head_dim, r = c.kv_lora_rank;
    // W_uk transposed: [r, dn]; W_uv: the head's v rows, [dv, r].
    a.w_uk_t = CopyHeads(a.kv_b_proj, c.num_attention_heads, r, dn, [&](int64_t h, int64_t i, int64_t j) {
      return std::pair{h * (dn + dv) + j, i};
    });
    a.w_uv = CopyHeads(a.kv_b_proj, c.num_attention_heads, dv, r, [&](int64_t h, int64_t i, int64_t j) {
      return std::pair{h * (dn + dv) + dn + i, j};
    });
  }

  // H matrices of rows x cols, element (h, i, j) = w at source(h, i, j), one after another in one
  // buffer, each head's panels starting on a cache line. Float and BF16 as they are; FP8 as its
  // codes where each 128 × 128 block of a copy lies in one scale block of w (so in DeepSeek V2 and
  // V3, whose heads are 128 wide), with those scales, else rounded to bf16 (code × block scale).
  template <typename Source>
  std::vector<WeightView> CopyHeads(const WeightView& w, int64_t H, int64_t rows, int64_t cols, Source source) {
    std::vector<float> scales;  // FP8: [H][row blocks][col blocks]
    const DType dtype = w.dtype == DType::kF8E4M3 && HeadScales(w, H, rows, cols, source, scales) ? DType::kF8E4M3
                        : w.dtype == DType::kF32                                                 ? DType::kF32
                                                                                                 : DType::kBF16;
    const size_t elements = dtype == DType::kF32 ? static_cast<size_t>(rows * cols) : PackedElements(rows, cols);
    const size_t head_bytes = (elements * DTypeSize(dtype) + 63) / 64 * 64;
    uint8_t* base = owned_.emplace_back(head_bytes * H).data();
    float* head_scales = nullptr;
    if (!scales.empty()) {
      head_scales = reinterpret_cast<float*>(owned_.emplace_back(scales.size() * sizeof(float)).data());
      std::memcpy(head_scales, scales.data(), scales.size() * sizeof(float));
    }
    const int64_t blocks = Fp8ScaleBlocks(rows) * Fp8ScaleBlocks(cols);
    std::vector<bf16> tmp16(dtype == DType::kBF16 ? rows * cols : 0);
    std::vector<uint8_t> codes(dtype == DType::kF8E4M3 ? rows * cols : 0);
    std::vector<WeightView> heads;
    for (int64_t h = 0; h < H; ++h) {
      uint8_t* at = base + h * head_bytes;
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) {
          const auto [sr, sc] = source(h, i, j);
          if (dtype == DType::kF32) reinterpret_cast<float*>(at)[i * cols + j] = w.at(sr, sc);
          else if (dtype == DType::kBF16) tmp16[i * cols + j] = F32ToBf16(w.at(sr, sc));
          else codes[i * cols + j] = w.fp8_code(sr, sc);
        }
      }
      if (dtype == DType::kF32) heads.push_back(WeightView{DType::kF32, rows, cols, at});
      else if (dtype == DType::kBF16) heads.push_back(PackInto(WeightView{DType::kBF16, rows, cols, tmp16.data()}, at));
      else heads.push_back(PackInto(WeightView{DType::kF8E4M3, rows, cols, codes.data(), nullptr, head_scales + h * blocks}, at));
    }
    return heads;
  }

  // Each head's block scales for FP8 copies of w (CopyHeads); false where a copy's block would
  // take elements from two of w's.
  template <typename Source>
  static bool HeadScales(const WeightView& w, int64_t H, int64_t rows, int64_t cols, Source source,
                         std::vector<float>& scales) {
    const int64_t row_blocks = Fp8ScaleBlocks(rows), col_blocks = Fp8ScaleBlocks(cols), w_cols = Fp8ScaleBlocks(w.cols);
    std::vector<int64_t> from(H * row_blocks * col_blocks, -1);  // the index of w's scale each block takes
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) {
          const auto [sr, sc] = source(h, i, j);
          const int64_t w_block = sr / kFp8Block * w_cols + sc / kFp8Block;
          int64_t& block = from[(h * row_blocks + i / kFp8Block) * col_blocks + j / kFp8Block];
          if (block >= 0 && block != w_block) return false;
          block = w_block;
        }
      }
    }
    scales.resize(from.size());
    for (size_t b = 0; b < from.size(); ++b) scales[b] = w.scale_inv[from[b]];
    return true;
  }

 private:
  const Checkpoint& ckpt_;
  std::vector<WeightBuffer>& owned_;
};

// Routed expert `e` of layer `i`, with the buffers it owns.
absl::StatusOr<MlpWeights> ReadExpert(const Checkpoint& ckpt, const ModelConfig& c, int64_t i, int64_t e,
                                      std::vector<WeightBuffer>& owned) {
  Loader L(ckpt, owned);
  return L.Mlp(absl::StrCat("model.layers.", i, ".mlp.experts.", e, "."), c.hidden_size, c.moe_intermediate_size);
}

absl::Status LoadLayer(Loader& L, ModelWeights& model, int64_t i, const ExpertFilter& want_expert,
                       LayerWeights& layer) {
  const ModelConfig& c = model.config;
  const std::string p = absl::StrCat("model.layers.", i, ".");
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  ASSIGN_OR_RETURN(layer.input_layernorm, L.Vector(p + "input_layernorm.weight", D));
  ASSIGN_OR_RETURN(layer.post_attention_layernorm, L.Vector(p + "post_attention_layernorm.weight", D));
  AttentionWeights& a = layer.attn;
  const std::string s = p + "self_attn.";
  if (c.q_lora_rank) {
    ASSIGN_OR_RETURN(a.q_a_proj, L.Matrix(s + "q_a_proj.weight", *c.q_lora_rank, D));
    ASSIGN_OR_RETURN(a.q_a_layernorm, L.Vector(s + "q_a_layernorm.weight", *c.q_lora_rank));
    ASSIGN_OR_RETURN(a.q_b_proj, L.Matrix(s + "q_b_proj.weight", H * c.qk_head_dim(), *c.q_lora_rank));
  } else {
    ASSIGN_OR_RETURN(a.q_proj, L.Matrix(s + "q_proj.weight", H * c.qk_head_dim(), D));
  }
  ASSIGN_OR_RETURN(a.kv_a_proj_with_mqa, L.Matrix(s + "kv_a_proj_with_mqa.weight", c.kv_cache_dim(), D));
  ASSIGN_OR_RETURN(a.kv_a_layernorm, L.Vector(s + "kv_a_layernorm.weight", c.kv_lora_rank));
  ASSIGN_OR_RETURN(a.kv_b_proj, L.Matrix(s + "kv_b_proj.weight", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank));
  ASSIGN_OR_RETURN(a.o_proj, L.Matrix(s + "o_proj.weight", D, H * c.v_head_dim));
  L.Absorb(a, c);

  layer.moe = c.is_moe_layer(i);
  const std::string m = p + "mlp.";
  if (!layer.moe) {
    ASSIGN_OR_RETURN(layer.dense, L.Mlp(m, D, c.intermediate_size));
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(layer.gate, L.Matrix(m + "gate.weight", c.n_routed_experts, D));
  if (c.topk_method == "noaux_tc") {
    ASSIGN_OR_RETURN(layer.e_score_correction_bias, L.Vector(m + "gate.e_score_correction_bias", c.n_routed_experts));
  }
  layer.experts.resize(c.n_routed_experts);
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    if (want_expert && !want_expert(i, e)) continue;
    ASSIGN_OR_RETURN(layer.experts[e], ReadExpert(*model.checkpoint, c, i, e, model.expert_owned[{i, e}]));
  }
  if (c.n_shared_experts > 0) {
    ASSIGN_OR_RETURN(layer.shared_experts, L.Mlp(m + "shared_experts.", D, c.n_shared_experts * c.moe_intermediate_size));
  }
  return absl::OkStatus();
}

using Measure = size_t (*)(const WeightView&);
size_t Bytes(const WeightView& w) { return w.bytes(); }
size_t Elements(const WeightView& w) { return static_cast<size_t>(w.rows * w.cols); }

size_t MlpSize(const MlpWeights& m, Measure size) { return size(m.gate_proj) + size(m.up_proj) + size(m.down_proj); }

size_t AttentionSize(const AttentionWeights& a, Measure size) {
  size_t b = size(a.kv_a_proj_with_mqa) + size(a.kv_b_proj) + size(a.o_proj);
  for (const auto* w : {&a.q_a_proj, &a.q_b_proj, &a.q_proj})
    if (*w) b += size(**w);
  return b;
}

// A layer's feed-forward, counting `routed_experts` routed experts if it is an MoE layer.
size_t FeedForwardSize(const LayerWeights& layer, int64_t routed_experts, Measure size) {
  if (!layer.moe) return MlpSize(layer.dense, size);
  size_t total = size(layer.gate);
  for (const MlpWeights& e : layer.experts) {  // every routed expert is the same size: use one that is loaded
    if (e.gate_proj.rows == 0) continue;
    total += routed_experts * MlpSize(e, size);
    break;
  }
  if (layer.shared_experts) total += MlpSize(*layer.shared_experts, size);
  return total;
}

// lm_head and every layer, counting `routed_experts` routed experts per MoE layer.
size_t LayersSize(const ModelWeights& m, int64_t routed_experts, Measure size) {
  size_t total = size(m.lm_head);
  for (const auto& layer : m.layers) total += AttentionSize(layer.attn, size) + FeedForwardSize(layer, routed_experts, size);
  return total;
}

}  // namespace

size_t ModelWeights::ActiveBytesPerToken() const { return LayersSize(*this, config.num_experts_per_tok, Bytes); }

size_t ModelWeights::DenseBytes() const { return LayersSize(*this, 0, Bytes); }

size_t ModelWeights::ActiveParametersPerToken() const {
  return LayersSize(*this, config.num_experts_per_tok, Elements);
}

size_t ModelWeights::LastFeedForwardParametersPerToken() const {
  return layers.empty() ? 0 : FeedForwardSize(layers.back(), config.num_experts_per_tok, Elements);
}

size_t ModelWeights::TotalBytes() const { return embed_tokens.bytes() + LayersSize(*this, config.n_routed_experts, Bytes); }

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(const std::string& dir,
                                                               const ExpertFilter& want_expert) {
  auto model = std::make_unique<ModelWeights>();
  ASSIGN_OR_RETURN(model->config, ModelConfig::Load((std::filesystem::path(dir) / "config.json").string()));
  ASSIGN_OR_RETURN(model->checkpoint, Checkpoint::Open(dir));
  const ModelConfig& c = model->config;
  Loader L(*model->checkpoint, model->owned);
  // Rows of the embedding are looked up, not multiplied: it stays as stored (F32 or BF16),
  // mapped in whole now rather than a page per new token.
  ASSIGN_OR_RETURN(model->embed_tokens, L.Raw("model.embed_tokens.weight", c.vocab_size, c.hidden_size));
  const TensorInfo* embed = *model->checkpoint->Get("model.embed_tokens.weight");
  if (model->embed_tokens.dtype == DType::kF8E4M3) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor model.embed_tokens.weight in ", embed->file, ": expected dtype BF16 or F32, found F8_E4M3"));
  }
  embed->MapResidentPages();
  ASSIGN_OR_RETURN(model->norm, L.Vector("model.norm.weight", c.hidden_size));
  ASSIGN_OR_RETURN(model->lm_head, L.Matrix("lm_head.weight", c.vocab_size, c.hidden_size));
  // One layer at a time: a config naming more layers than the checkpoint holds stops at the
  // first missing tensor instead of allocating num_hidden_layers entries up front.
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights layer;
    RETURN_IF_ERROR(LoadLayer(L, *model, i, want_expert, layer));
    model->layers.push_back(std::move(layer));
  }
  return model;
}

}  // namespace daedalus

namespace daedalus {

absl::StatusOr<StagedExperts> ReadMissingExperts(const ModelWeights& model, const ExpertFilter& want) {
  const ModelConfig& c = model.config;
  StagedExperts staged;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const LayerWeights& layer = model.layers[i];
    if (!layer.moe) continue;
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      if (layer.experts[e].gate_proj.rows > 0 || !want(i, e)) continue;
      StagedExperts::Expert& x = staged.experts.emplace_back();
      x.layer = i, x.expert = e;
      ASSIGN_OR_RETURN(x.weights, ReadExpert(*model.checkpoint, c, i, e, x.owned));
    }
  }
  return staged;
}

void InstallExperts(ModelWeights& model, StagedExperts staged, const ExpertFilter& keep) {
  for (StagedExperts::Expert& x : staged.experts) {
    model.layers[x.layer].experts[x.expert] = x.weights;
    model.expert_owned[{x.layer, x.expert}] = std::move(x.owned);
  }
  for (int64_t i = 0; i < model.config.num_hidden_layers; ++i) {
    LayerWeights& layer = model.layers[i];
    for (int64_t e = 0; e < static_cast<int64_t>(layer.experts.size()); ++e) {
      if (layer.experts[e].gate_proj.rows == 0 || keep(i, e)) continue;
      layer.experts[e] = MlpWeights{};
      model.expert_owned.erase({i, e});
    }
  }
}

absl::Status LoadMissingExperts(ModelWeights& model, const ExpertFilter& want) {
  ASSIGN_OR_RETURN(StagedExperts staged, ReadMissingExperts(model, want));
  InstallExperts(model, std::move(staged), want);
  return absl::OkStatus();
}

}  // namespace daedalus
