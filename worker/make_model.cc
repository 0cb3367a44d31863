#include "worker/make_model.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/safetensors_writer.h"
#include "core/status.h"
#include "kernels/linear.h"
#include "worker/make_tokenizer.h"

namespace daedalus {
namespace {

enum class Kind { kProjection, kEmbedding, kNorm, kGate, kBias };

struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  Kind kind;
};

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform values of mean `mean` and standard deviation `std`, from a stream keyed by seed and name.
std::vector<float> Draw(uint64_t seed, const std::string& name, int64_t n, float mean, float std) {
  std::vector<float> out(n);
  const uint64_t key = seed * 0x100000001b3ull ^ std::hash<std::string>{}(name);
  const float half_width = std * std::sqrt(3.0f);
  constexpr int64_t kChunk = 1 << 16;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < (n + kChunk - 1) / kChunk; ++c) {
    uint64_t state = key ^ (static_cast<uint64_t>(c) * 0xd1342543de82ef95ull);
    for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
      const double u = static_cast<double>(SplitMix(state) >> 11) * 0x1.0p-53;  // [0, 1)
      out[i] = mean + half_width * static_cast<float>(2 * u - 1);
    }
  }
  return out;
}

std::vector<float> Values(uint64_t seed, const Spec& s, const ModelConfig& c) {
  int64_t n = 1;
  for (int64_t d : s.shape) n *= d;
  switch (s.kind) {
    case Kind::kEmbedding: return Draw(seed, s.name, n, 0.0f, 1.0f);
    case Kind::kNorm: return Draw(seed, s.name, n, 1.0f, 0.05f);
    case Kind::kBias: return Draw(seed, s.name, n, 0.0f, 0.05f);
    case Kind::kGate: return Draw(seed, s.name, n, 0.0f, 1.0f / std::sqrt(static_cast<float>(s.shape[1])));
    case Kind::kProjection: {
      // lm_head a little larger so that greedy choices are not near-ties.
      const float gain = s.name == "lm_head.weight" ? 2.0f : 1.0f;
      return Draw(seed, s.name, n, 0.0f, gain / std::sqrt(static_cast<float>(s.shape[1])));
    }
  }
  return {};
}

std::vector<Spec> Specs(const ModelConfig& c) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  std::vector<Spec> specs;
  auto proj = [&](std::string name, int64_t out, int64_t in) { specs.push_back({std::move(name), {out, in}, Kind::kProjection}); };
  auto norm = [&](std::string name, int64_t n) { specs.push_back({std::move(name), {n}, Kind::kNorm}); };
  auto mlp = [&](const std::string& p, int64_t width) {
    proj(p + "gate_proj.weight", width, D);
    proj(p + "up_proj.weight", width, D);
    proj(p + "down_proj.weight", D, width);
  };
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, D}, Kind::kEmbedding});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    norm(p + "input_layernorm.weight", D);
    if (c.q_lora_rank) {
      proj(p + "self_attn.q_a_proj.weight", *c.q_lora_rank, D);
      norm(p + "self_attn.q_a_layernorm.weight", *c.q_lora_rank);
      proj(p + "self_attn.q_b_proj.weight", H * c.qk_head_dim(), *c.q_lora_rank);
    } else {
      proj(p + "self_attn.q_proj.weight", H * c.qk_head_dim(), D);
    }
    proj(p + "self_attn.kv_a_proj_with_mqa.weight", c.kv_cache_dim(), D);
    norm(p + "self_attn.kv_a_layernorm.weight", c.kv_lora_rank);
    proj(p + "self_attn.kv_b_proj.weight", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
    proj(p + "self_attn.o_proj.weight", D, H * c.v_head_dim);
    norm(p + "post_attention_layernorm.weight", D);
    if (!c.is_moe_layer(i)) {
      mlp(p + "mlp.", c.intermediate_size);
      continue;
    }
    specs.push_back({p + "mlp.gate.weight", {c.n_routed_experts, D}, Kind::kGate});
    if (c.topk_method == "noaux_tc") specs.push_back({p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}, Kind::kBias});
    for (int64_t e = 0; e < c.n_routed_experts; ++e) mlp(absl::StrCat(p, "mlp.experts.", e, "."), c.moe_intermediate_size);
    if (c.n_shared_experts > 0) mlp(p + "mlp.shared_experts.", c.n_shared_experts * c.moe_intermediate_size);
  }
  norm("model.norm.weight", D);
  specs.push_back({"lm_head.weight", {c.vocab_size, D}, Kind::kProjection});
  return specs;
}

// FP8 applies to projections inside the layers (attention and MLPs), as DeepSeek publishes V3.
bool Quantized(const Spec& s, DType dtype) {
  return dtype == DType::kF8E4M3 && s.kind == Kind::kProjection && s.name.rfind("model.layers.", 0) == 0;
}

DType StoredDType(const Spec& s, DType dtype) {
  if (s.kind == Kind::kBias) return DType::kF32;
  if (Quantized(s, dtype)) return DType::kF8E4M3;
  return dtype == DType::kF32 ? DType::kF32 : DType::kBF16;
}

size_t StoredBytes(const Spec& s, DType dtype) {
  size_t n = 1;
  for (int64_t d : s.shape) n *= d;
  size_t bytes = n * DTypeSize(StoredDType(s, dtype));
  if (Quantized(s, dtype)) bytes += Fp8ScaleBlocks(s.shape[0]) * Fp8ScaleBlocks(s.shape[1]) * 4;
  return bytes;
}

void AddTensor(SafetensorsWriter& w, const Spec& s, const std::vector<float>& v, DType dtype) {
  const DType stored = StoredDType(s, dtype);
  if (stored == DType::kF32) {
    w.Add(s.name, stored, s.shape, v.data(), v.size() * 4);
  } else if (stored == DType::kBF16) {
    std::vector<bf16> b(v.size());
    F32ToBf16(v.data(), b.data(), v.size());
    w.Add(s.name, stored, s.shape, b.data(), b.size() * 2);
  } else {
    const int64_t rows = s.shape[0], cols = s.shape[1];
    const int64_t sr = Fp8ScaleBlocks(rows), sc = Fp8ScaleBlocks(cols);
    std::vector<float> scale(sr * sc, 0.0f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t col = 0; col < cols; ++col)
        scale[(r / kFp8Block) * sc + col / kFp8Block] = std::max(scale[(r / kFp8Block) * sc + col / kFp8Block], std::fabs(v[r * cols + col]));
    for (float& x : scale) x = x > 0 ? x / 448.0f : 1.0f;  // dequantize: code value × scale
    std::vector<uint8_t> codes(v.size());
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t col = 0; col < cols; ++col)
        codes[r * cols + col] = F32ToFp8E4M3(v[r * cols + col] / scale[(r / kFp8Block) * sc + col / kFp8Block]);
    w.Add(s.name, stored, s.shape, codes.data(), codes.size());
    w.Add(s.name + "_scale_inv", DType::kF32, {sr, sc}, scale.data(), scale.size() * 4);
  }
}

}  // namespace

absl::Status MakeModel(const ModelConfig& config, const MakeModelOptions& options, const std::string& dir) {
  namespace fs = std::filesystem;
  ModelConfig c = config;
  c.fp8 = options.dtype == DType::kF8E4M3;
  RETURN_IF_ERROR(c.Validate("make-model"));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  {
    std::ofstream out(fs::path(dir) / "config.json");
    out << c.ToJson().dump(2) << "\n";
    if (!out) return absl::InternalError(absl::StrCat(dir, "/config.json: write failed"));
  }
  RETURN_IF_ERROR(WriteTokenizer(config, dir));
  if (options.config_only) return absl::OkStatus();
  // Plan the shards first: their names carry the count.
  const std::vector<Spec> specs = Specs(c);
  std::vector<std::vector<const Spec*>> shards(1);
  size_t total = 0, current = 0;
  for (const Spec& s : specs) {
    const size_t bytes = StoredBytes(s, options.dtype);
    if (current > 0 && current + bytes > static_cast<size_t>(options.shard_bytes)) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(&s);
    current += bytes;
    total += bytes;
  }
  // Weights of an earlier make-model into the same directory must not mix with these.
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("model", 0) == 0 && (name.ends_with(".safetensors") || name == "model.safetensors.index.json")) {
      fs::remove(entry.path(), ec);
    }
  }
  nlohmann::ordered_json weight_map;
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : absl::StrFormat("model-%05d-of-%05d.safetensors", k + 1, shards.size());
    SafetensorsWriter writer;
    for (const Spec* s : shards[k]) AddTensor(writer, *s, Values(options.seed, *s, c), options.dtype);
    for (const std::string& name : writer.names()) weight_map[name] = file;
    RETURN_IF_ERROR(writer.Write((fs::path(dir) / file).string()));
  }
  if (shards.size() > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = weight_map;
    std::ofstream out(fs::path(dir) / "model.safetensors.index.json");
    out << index.dump(2) << "\n";
    if (!out) return absl::InternalError(absl::StrCat(dir, "/model.safetensors.index.json: write failed"));
  }
  return absl::OkStatus();
}

}  // namespace daedalus
