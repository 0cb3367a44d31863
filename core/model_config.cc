#include "core/model_config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace daedalus {
namespace {

using nlohmann::json;

absl::Status FieldError(const std::string& source, const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field \"", field, "\" ", what));
}

// Reads `field` into `out` when present; `required` fields must be present.
template <typename T>
absl::Status Read(const json& j, const std::string& source, const std::string& field, T& out, bool required) {
  if (!j.contains(field) || j[field].is_null()) {
    if (required) return FieldError(source, field, "is missing");
    return absl::OkStatus();
  }
  const json& v = j[field];
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) return FieldError(source, field, "must be true or false");
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer()) return FieldError(source, field, "must be an integer");
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) return FieldError(source, field, "must be a number");
  } else {
    if (!v.is_string()) return FieldError(source, field, "must be a string");
  }
  out = v.get<T>();
  return absl::OkStatus();
}

}  // namespace

double YarnMscale(double factor, double mscale) {
  return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

double ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (rope_scaling) {
    double m = YarnMscale(rope_scaling->factor, rope_scaling->mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

absl::StatusOr<ModelConfig> ModelConfig::FromJson(const json& j, const std::string& src) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(src, ": not a JSON object"));
  ModelConfig c;
  RETURN_IF_ERROR(Read(j, src, "model_type", c.model_type, true));
  if (c.model_type != "deepseek_v3" && c.model_type != "deepseek_v2") {
    return FieldError(src, "model_type", absl::StrCat("is \"", c.model_type,
                                                      "\"; supported: deepseek_v3, deepseek_v2"));
  }
  RETURN_IF_ERROR(Read(j, src, "vocab_size", c.vocab_size, true));
  RETURN_IF_ERROR(Read(j, src, "hidden_size", c.hidden_size, true));
  RETURN_IF_ERROR(Read(j, src, "intermediate_size", c.intermediate_size, true));
  RETURN_IF_ERROR(Read(j, src, "moe_intermediate_size", c.moe_intermediate_size, true));
  RETURN_IF_ERROR(Read(j, src, "num_hidden_layers", c.num_hidden_layers, true));
  RETURN_IF_ERROR(Read(j, src, "num_nextn_predict_layers", c.num_nextn_predict_layers, false));
  RETURN_IF_ERROR(Read(j, src, "num_attention_heads", c.num_attention_heads, true));
  RETURN_IF_ERROR(Read(j, src, "n_shared_experts", c.n_shared_experts, false));
  RETURN_IF_ERROR(Read(j, src, "n_routed_experts", c.n_routed_experts, true));
  RETURN_IF_ERROR(Read(j, src, "routed_scaling_factor", c.routed_scaling_factor, false));
  RETURN_IF_ERROR(Read(j, src, "kv_lora_rank", c.kv_lora_rank, true));
  if (j.contains("q_lora_rank") && !j["q_lora_rank"].is_null()) {
    int64_t q = 0;
    RETURN_IF_ERROR(Read(j, src, "q_lora_rank", q, true));
    c.q_lora_rank = q;
  }
  RETURN_IF_ERROR(Read(j, src, "qk_rope_head_dim", c.qk_rope_head_dim, true));
  RETURN_IF_ERROR(Read(j, src, "v_head_dim", c.v_head_dim, true));
  RETURN_IF_ERROR(Read(j, src, "qk_nope_head_dim", c.qk_nope_head_dim, true));
  RETURN_IF_ERROR(Read(j, src, "topk_method", c.topk_method, false));
  RETURN_IF_ERROR(Read(j, src, "n_group", c.n_group, false));
  RETURN_IF_ERROR(Read(j, src, "topk_group", c.topk_group, false));
  RETURN_IF_ERROR(Read(j, src, "num_experts_per_tok", c.num_experts_per_tok, true));
  RETURN_IF_ERROR(Read(j, src, "first_k_dense_replace", c.first_k_dense_replace, false));
  RETURN_IF_ERROR(Read(j, src, "moe_layer_freq", c.moe_layer_freq, false));
  RETURN_IF_ERROR(Read(j, src, "norm_topk_prob", c.norm_topk_prob, false));
  RETURN_IF_ERROR(Read(j, src, "scoring_func", c.scoring_func, false));
  RETURN_IF_ERROR(Read(j, src, "rms_norm_eps", c.rms_norm_eps, false));
  RETURN_IF_ERROR(Read(j, src, "rope_theta", c.rope_theta, false));
  RETURN_IF_ERROR(Read(j, src, "max_position_embeddings", c.max_position_embeddings, false));
  int64_t token = 0;
  if (j.contains("bos_token_id") && !j["bos_token_id"].is_null()) {
    RETURN_IF_ERROR(Read(j, src, "bos_token_id", token, true));
    c.bos_token_id = token;
  }
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    RETURN_IF_ERROR(Read(j, src, "eos_token_id", token, true));
    c.eos_token_id = token;
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& r = j["rope_scaling"];
    if (!r.is_object()) return FieldError(src, "rope_scaling", "must be an object or null");
    std::string type;
    if (r.contains("type")) RETURN_IF_ERROR(Read(r, src, "type", type, true));
    else RETURN_IF_ERROR(Read(r, src, "rope_type", type, true));
    if (type != "yarn") return FieldError(src, "rope_scaling.type", absl::StrCat("is \"", type, "\"; supported: yarn"));
    RopeScaling y;
    RETURN_IF_ERROR(Read(r, src, "factor", y.factor, true));
    RETURN_IF_ERROR(Read(r, src, "original_max_position_embeddings", y.original_max_position_embeddings, true));
    RETURN_IF_ERROR(Read(r, src, "beta_fast", y.beta_fast, false));
    RETURN_IF_ERROR(Read(r, src, "beta_slow", y.beta_slow, false));
    RETURN_IF_ERROR(Read(r, src, "mscale", y.mscale, false));
    RETURN_IF_ERROR(Read(r, src, "mscale_all_dim", y.mscale_all_dim, false));
    c.rope_scaling = y;
  }
  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    const json& q = j["quantization_config"];
    std::string fmt;
    if (!q.is_object()) return FieldError(src, "quantization_config", "must be an object");
    RETURN_IF_ERROR(Read(q, src, "fmt", fmt, true));
    if (fmt != "e4m3") return FieldError(src, "quantization_config.fmt", absl::StrCat("is \"", fmt, "\"; supported: e4m3"));
    if (q.contains("weight_block_size") && q["weight_block_size"] != json::array({128, 128})) {
      return FieldError(src, "quantization_config.weight_block_size", "must be [128, 128]");
    }
    c.fp8 = true;
  }
  RETURN_IF_ERROR(c.Validate(src));
  return c;
}

absl::Status ModelConfig::Validate(const std::string& src) const {
  // Every size positive and at most 2^24 (V3's largest, vocab_size, is 129,280; heads at most
  // 2^16), so that every product of them the loader takes fits in 64 bits.
  constexpr int64_t kMost = int64_t{1} << 24;
  auto at_most = [&](const char* field, int64_t v) {
    return v <= kMost ? absl::OkStatus()
                      : FieldError(src, field, absl::StrCat("is ", v, ", larger than any model (at most ", kMost, ")"));
  };
  auto positive = [&](const char* field, int64_t v) {
    RETURN_IF_ERROR(at_most(field, v));
    return v > 0 ? absl::OkStatus() : FieldError(src, field, absl::StrCat("must be positive, found ", v));
  };
  RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  RETURN_IF_ERROR(positive("hidden_size", hidden_size));
  RETURN_IF_ERROR(positive("num_hidden_layers", num_hidden_layers));
  RETURN_IF_ERROR(positive("num_attention_heads", num_attention_heads));
  if (num_attention_heads > (1 << 16)) return FieldError(src, "num_attention_heads", "is larger than any model (2^16)");
  for (const auto& [field, v] : {std::pair<const char*, int64_t>{"qk_rope_head_dim", qk_rope_head_dim},
                                 {"q_lora_rank", q_lora_rank.value_or(1)}, {"intermediate_size", intermediate_size},
                                 {"moe_intermediate_size", moe_intermediate_size},
                                 {"n_routed_experts", n_routed_experts}, {"n_shared_experts", n_shared_experts},
                                 {"max_position_embeddings", max_position_embeddings}}) {
    RETURN_IF_ERROR(at_most(field, v));
  }
  RETURN_IF_ERROR(positive("kv_lora_rank", kv_lora_rank));
  RETURN_IF_ERROR(positive("qk_nope_head_dim", qk_nope_head_dim));
  RETURN_IF_ERROR(positive("v_head_dim", v_head_dim));
  RETURN_IF_ERROR(positive("moe_layer_freq", moe_layer_freq));
  if (qk_rope_head_dim <= 0 || qk_rope_head_dim % 2 != 0) {
    return FieldError(src, "qk_rope_head_dim", absl::StrCat("must be positive and even, found ", qk_rope_head_dim));
  }
  if (q_lora_rank && *q_lora_rank <= 0) return FieldError(src, "q_lora_rank", "must be positive or null");
  if (first_k_dense_replace < 0) return FieldError(src, "first_k_dense_replace", "must not be negative");
  if (first_k_dense_replace > 0) RETURN_IF_ERROR(positive("intermediate_size", intermediate_size));
  if (n_routed_experts < 0) return FieldError(src, "n_routed_experts", "must not be negative");
  if (n_shared_experts < 0) return FieldError(src, "n_shared_experts", "must not be negative");
  RETURN_IF_ERROR(positive("max_position_embeddings", max_position_embeddings));
  if (n_routed_experts > 0) {
    RETURN_IF_ERROR(positive("moe_intermediate_size", moe_intermediate_size));
    if (num_experts_per_tok <= 0 || num_experts_per_tok > n_routed_experts) {
      return FieldError(src, "num_experts_per_tok",
                        absl::StrCat("must be in [1, n_routed_experts=", n_routed_experts, "], found ",
                                     num_experts_per_tok));
    }
    if (n_group <= 0 || n_routed_experts % n_group != 0) {
      return FieldError(src, "n_group", absl::StrCat("must divide n_routed_experts=", n_routed_experts, ", found ", n_group));
    }
    if (topk_group <= 0 || topk_group > n_group) {
      return FieldError(src, "topk_group", absl::StrCat("must be in [1, n_group=", n_group, "], found ", topk_group));
    }
    if (topk_group * (n_routed_experts / n_group) < num_experts_per_tok) {
      return FieldError(src, "topk_group", "keeps fewer experts than num_experts_per_tok");
    }
    if (topk_method == "noaux_tc" && n_routed_experts / n_group < 2) {
      return FieldError(src, "n_group", "noaux_tc scores a group by its top-2 experts: groups need at least 2");
    }
  }
  if (scoring_func != "sigmoid" && scoring_func != "softmax") {
    return FieldError(src, "scoring_func", absl::StrCat("is \"", scoring_func, "\"; supported: sigmoid, softmax"));
  }
  if (topk_method != "noaux_tc" && topk_method != "group_limited_greedy" && topk_method != "greedy") {
    return FieldError(src, "topk_method",
                      absl::StrCat("is \"", topk_method, "\"; supported: noaux_tc, group_limited_greedy, greedy"));
  }
  if (!(rms_norm_eps > 0)) return FieldError(src, "rms_norm_eps", "must be positive");
  if (!(rope_theta > 1)) return FieldError(src, "rope_theta", "must be greater than 1");
  if (rope_scaling) {
    const RopeScaling& y = *rope_scaling;
    if (!(y.factor >= 1.0)) return FieldError(src, "rope_scaling.factor", "must be >= 1");
    RETURN_IF_ERROR(positive("rope_scaling.original_max_position_embeddings", y.original_max_position_embeddings));
    if (!(y.beta_slow > 0 && y.beta_fast > y.beta_slow)) {
      return FieldError(src, "rope_scaling.beta_fast",
                        absl::StrCat("and beta_slow must satisfy beta_fast > beta_slow > 0, found ", y.beta_fast, " and ",
                                     y.beta_slow));
    }
  }
  if (bos_token_id && (*bos_token_id < 0 || *bos_token_id >= vocab_size)) {
    return FieldError(src, "bos_token_id", "lies outside the vocabulary");
  }
  if (eos_token_id && (*eos_token_id < 0 || *eos_token_id >= vocab_size)) {
    return FieldError(src, "eos_token_id", "lies outside the vocabulary");
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ModelConfig::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON (truncated?)"));
  return FromJson(j, path);
}

nlohmann::ordered_json ModelConfig::ToJson() const {
  nlohmann::ordered_json j;
  j["architectures"] = {model_type == "deepseek_v3" ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"};
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["aux_loss_alpha"] = 0.001;
  j["bos_token_id"] = bos_token_id ? nlohmann::ordered_json(*bos_token_id) : nullptr;
  j["eos_token_id"] = eos_token_id ? nlohmann::ordered_json(*eos_token_id) : nullptr;
  j["ep_size"] = 1;
  j["first_k_dense_replace"] = first_k_dense_replace;
  j["hidden_act"] = "silu";
  j["hidden_size"] = hidden_size;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = intermediate_size;
  j["kv_lora_rank"] = kv_lora_rank;
  j["max_position_embeddings"] = max_position_embeddings;
  j["model_type"] = model_type;
  j["moe_intermediate_size"] = moe_intermediate_size;
  j["moe_layer_freq"] = moe_layer_freq;
  j["n_group"] = n_group;
  j["n_routed_experts"] = n_routed_experts;
  j["n_shared_experts"] = n_shared_experts;
  j["norm_topk_prob"] = norm_topk_prob;
  j["num_attention_heads"] = num_attention_heads;
  j["num_experts_per_tok"] = num_experts_per_tok;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_key_value_heads"] = num_attention_heads;
  j["num_nextn_predict_layers"] = num_nextn_predict_layers;
  j["pretraining_tp"] = 1;
  j["q_lora_rank"] = q_lora_rank ? nlohmann::ordered_json(*q_lora_rank) : nullptr;
  j["qk_nope_head_dim"] = qk_nope_head_dim;
  j["qk_rope_head_dim"] = qk_rope_head_dim;
  if (fp8) {
    j["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"},
                                {"weight_block_size", {128, 128}}};
  }
  j["rms_norm_eps"] = rms_norm_eps;
  if (rope_scaling) {
    j["rope_scaling"] = {{"beta_fast", rope_scaling->beta_fast},
                         {"beta_slow", rope_scaling->beta_slow},
                         {"factor", rope_scaling->factor},
                         {"mscale", rope_scaling->mscale},
                         {"mscale_all_dim", rope_scaling->mscale_all_dim},
                         {"original_max_position_embeddings", rope_scaling->original_max_position_embeddings},
                         {"type", "yarn"}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["rope_theta"] = rope_theta;
  j["routed_scaling_factor"] = routed_scaling_factor;
  j["scoring_func"] = scoring_func;
  j["seq_aux"] = true;
  j["tie_word_embeddings"] = false;
  j["topk_group"] = topk_group;
  j["topk_method"] = topk_method;
  j["torch_dtype"] = "bfloat16";
  j["transformers_version"] = "4.46.3";
  j["use_cache"] = true;
  j["v_head_dim"] = v_head_dim;
  j["vocab_size"] = vocab_size;
  return j;
}

}  // namespace daedalus
