#include "coordinator/openai_request.h"

#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace daedalus {

namespace {

using json = nlohmann::json;

// Field readers: each returns false after filling `problem`.
class Fields {
 public:
  Fields(const json& body, Problem& problem) : body_(body), problem_(problem) {}
  bool Fail(const std::string& param, const std::string& message) {
    problem_ = Problem{400, absl::StrCat(param, ": ", message), param, ""};
    return false;
  }
  bool Has(const char* key) const { return body_.contains(key) && !body_[key].is_null(); }
  bool Number(const char* key, double lo, double hi, double& out) {
    if (!Has(key)) return true;
    if (!body_[key].is_number() || !std::isfinite(body_[key].get<double>())) return Fail(key, "must be a number");
    out = body_[key].get<double>();
    if (out < lo || out > hi) return Fail(key, absl::StrFormat("must be in [%g, %g], got %g", lo, hi, out));
    return true;
  }
  bool Integer(const char* key, int64_t lo, int64_t hi, int64_t& out) {
    if (!Has(key)) return true;
    if (!body_[key].is_number_integer()) return Fail(key, "must be an integer");
    out = body_[key].get<int64_t>();
    if (out < lo || out > hi) return Fail(key, absl::StrCat("must be in [", lo, ", ", hi, "], got ", out));
    return true;
  }
  bool Bool(const char* key, bool& out) {
    if (!Has(key)) return true;
    if (!body_[key].is_boolean()) return Fail(key, "must be true or false");
    out = body_[key].get<bool>();
    return true;
  }
  // The fields both endpoints share: sampling, stop, n, stream.
  bool Common(OpenAiRequest& p) {
    double temperature = 1.0, top_p = 1.0;
    int64_t n = 1, seed = 0;
    if (!Number("temperature", 0, 2, temperature) || !Number("top_p", 0, 1, top_p) || !Integer("n", 1, 1, n)) return false;
    if (top_p == 0) return Fail("top_p", "must be in (0, 1]");
    p.request.mutable_sampling()->set_temperature(static_cast<float>(temperature));
    p.request.mutable_sampling()->set_top_p(static_cast<float>(top_p));
    if (Has("seed")) {
      if (!Integer("seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), seed)) return false;
      p.request.mutable_sampling()->set_seed(static_cast<uint64_t>(seed));
    } else {
      thread_local std::mt19937_64 entropy(std::random_device{}());  // no seed: a different draw each time
      p.request.mutable_sampling()->set_seed(entropy());
    }
    for (const char* unsupported : {"presence_penalty", "frequency_penalty"}) {
      double v = 0;
      if (!Number(unsupported, -2, 2, v)) return false;
      if (v != 0) return Fail(unsupported, "is not supported (only 0)");
    }
    if (Has("stop")) {
      const json& stop = body_["stop"];
      std::vector<std::string> stops;
      if (stop.is_string()) {
        stops.push_back(stop.get<std::string>());
      } else if (stop.is_array() && stop.size() <= 4) {
        for (const json& s : stop) {
          if (!s.is_string()) return Fail("stop", "must be a string or up to 4 strings");
          stops.push_back(s.get<std::string>());
        }
      } else {
        return Fail("stop", "must be a string or up to 4 strings");
      }
      for (const auto& s : stops) {
        if (s.empty()) return Fail("stop", "stop strings must not be empty");
        p.request.add_stop(s);
      }
    }
    if (!Bool("stream", p.stream)) return false;
    if (Has("stream_options")) {
      const json& o = body_["stream_options"];
      if (!o.is_object()) return Fail("stream_options", "must be an object");
      if (o.contains("include_usage")) {
        if (!o["include_usage"].is_boolean()) return Fail("stream_options.include_usage", "must be true or false");
        p.include_usage = o["include_usage"].get<bool>();
      }
    }
    p.request.set_return_text(true);
    return true;
  }

 private:
  const json& body_;
  Problem& problem_;
};

class Parser {
 public:
  Parser(const ModelConfig& config, const Tokenizer* tokenizer, const OpenAiParseOptions& options)
      : config_(config), tokenizer_(tokenizer), options_(options) {}

  bool CheckModel(const json& body, Problem& problem) {
    if (!body.contains("model")) return true;
    if (!body["model"].is_string()) {
      problem = {400, "model: must be a string", "model", ""};
      return false;
    }
    const std::string model = body["model"].get<std::string>();
    if (model == options_.model_name || model == "daedalus") return true;
    problem = {404, absl::StrCat("model \"", model, "\" is not served here (this cluster serves \"", options_.model_name, "\")"),
               "model", "model_not_found"};
    return false;
  }

  bool ParseCompletion(const json& body, OpenAiRequest& p, Problem& problem) {
    Fields f(body, problem);
    if (!CheckModel(body, problem) || !f.Common(p)) return false;
    if (!body.contains("prompt")) return f.Fail("prompt", "is required");
    json prompt = body["prompt"];
    if (prompt.is_array() && prompt.size() == 1 && (prompt[0].is_string() || prompt[0].is_array())) prompt = prompt[0];
    if (prompt.is_string()) {
      p.request.set_prompt_text(prompt.get<std::string>());
      if (prompt.get<std::string>().empty()) return f.Fail("prompt", "is empty");
    } else if (prompt.is_array() && !prompt.empty() && prompt[0].is_number_integer()) {
      for (const json& id : prompt) {
        if (!id.is_number_integer()) return f.Fail("prompt", "a token array must hold integers only");
        // Range-check before narrowing: 4294967297 must not become token 1.
        if (id.is_number_unsigned() ? id.get<uint64_t>() >= static_cast<uint64_t>(config_.vocab_size)
                                    : (id.get<int64_t>() < 0 || id.get<int64_t>() >= config_.vocab_size)) {
          return f.Fail("prompt", absl::StrCat("token id ", id.dump(), " is outside the vocabulary [0, ", config_.vocab_size, ")"));
        }
        p.request.add_prompt_ids(static_cast<int32_t>(id.get<int64_t>()));
      }
    } else {
      return f.Fail("prompt", "must be a string or an array of token ids (one prompt: n and batches are not supported)");
    }
    int64_t max_tokens = 16, logprobs = -1;
    if (!f.Integer("max_tokens", 0, config_.max_position_embeddings, max_tokens)) return false;
    if (!f.Integer("logprobs", 0, 5, logprobs)) return false;
    if (body.contains("echo") && body["echo"] == true) return f.Fail("echo", "is not supported");
    if (body.contains("best_of") && body["best_of"] != 1 && !body["best_of"].is_null()) return f.Fail("best_of", "is not supported");
    p.request.set_max_new_tokens(max_tokens);
    if (logprobs >= 0) {
      p.logprobs = true;
      p.top_logprobs = static_cast<int>(logprobs);
      p.request.set_logprobs(std::max<int>(1, p.top_logprobs));
    }
    return true;
  }

  bool ParseChat(const json& body, OpenAiRequest& p, Problem& problem) {
    Fields f(body, problem);
    if (!CheckModel(body, problem) || !f.Common(p)) return false;
    if (tokenizer_ == nullptr) return f.Fail("messages", "this model has no tokenizer.json");
    if (config_.model_type != "deepseek_v3") {
      return f.Fail("messages", absl::StrCat("no chat format for model_type ", config_.model_type, " (use /v1/completions)"));
    }
    if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) {
      return f.Fail("messages", "must be a non-empty array");
    }
    std::vector<ChatMessage> messages;
    for (size_t i = 0; i < body["messages"].size(); ++i) {
      const json& m = body["messages"][i];
      const std::string where = absl::StrCat("messages[", i, "]");
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) return f.Fail(where, "needs a string \"role\"");
      ChatMessage message{m["role"].get<std::string>(), ""};
      if (message.role == "developer") message.role = "system";
      const json& content = m.value("content", json());
      if (content.is_string()) {
        message.content = content.get<std::string>();
      } else if (content.is_array()) {  // text parts
        for (const json& part : content) {
          if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
              !part["text"].is_string()) {
            return f.Fail(where, "content parts must be {\"type\": \"text\", \"text\": ...}");
          }
          message.content += part["text"].get<std::string>();
        }
      } else if (!content.is_null()) {
        return f.Fail(where, "content must be a string or an array of text parts");
      }
      if (message.role != "system" && message.role != "user" && message.role != "assistant") {
        return f.Fail(where, absl::StrCat("role \"", message.role, "\" is not supported (system, user, assistant)"));
      }
      messages.push_back(std::move(message));
    }
    auto ids = tokenizer_->EncodeChat(messages);
    if (!ids.ok()) return f.Fail("messages", std::string(ids.status().message()));
    *p.request.mutable_prompt_ids() = {ids->begin(), ids->end()};
    const int64_t room = config_.max_position_embeddings - static_cast<int64_t>(ids->size());
    int64_t max_tokens = std::max<int64_t>(0, std::min(options_.default_chat_max_tokens, room)), top = 0;
    if (!f.Integer("max_tokens", 0, config_.max_position_embeddings, max_tokens)) return false;
    if (!f.Integer("max_completion_tokens", 0, config_.max_position_embeddings, max_tokens)) return false;
    if (!f.Bool("logprobs", p.logprobs) || !f.Integer("top_logprobs", 0, 20, top)) return false;
    if (top > 0 && !p.logprobs) return f.Fail("top_logprobs", "needs \"logprobs\": true");
    p.request.set_max_new_tokens(max_tokens);
    p.max_tokens_defaulted = !f.Has("max_tokens") && !f.Has("max_completion_tokens");
    if (p.logprobs) {
      p.top_logprobs = static_cast<int>(top);
      p.request.set_logprobs(std::max<int>(1, p.top_logprobs));
    }
    return true;
  }

 private:
  const ModelConfig& config_;
  const Tokenizer* tokenizer_;
  const OpenAiParseOptions& options_;
};

}  // namespace

void FitDefaultMaxTokens(OpenAiRequest& r, int64_t longest_sequence) {
  const int64_t room = longest_sequence - r.request.prompt_ids_size();
  if (r.max_tokens_defaulted && room > 0 && room < r.request.max_new_tokens()) r.request.set_max_new_tokens(room);
}

std::optional<Problem> ParseOpenAiRequest(std::string_view body, bool chat, const ModelConfig& config,
                                          const Tokenizer* tokenizer, const OpenAiParseOptions& options,
                                          OpenAiRequest& out) {
  const json parsed = json::parse(body, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object()) return Problem{400, "the body is not a JSON object", "", ""};
  Problem problem;
  Parser parser(config, tokenizer, options);
  if (chat ? parser.ParseChat(parsed, out, problem) : parser.ParseCompletion(parsed, out, problem)) return std::nullopt;
  return problem;
}

}  // namespace daedalus
