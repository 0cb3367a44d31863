#include "coordinator/openai_api.h"

#include <atomic>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/auth.h"
#include "coordinator/generation.h"
#include "coordinator/outcome.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace daedalus {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// What was wrong with a request, for OpenAI's error body.
struct Problem {
  int http = 400;
  std::string message;
  std::string param;  // the offending field, or empty
  std::string code;   // e.g. "invalid_api_key", or empty
};

void SendError(httplib::Response& res, const Problem& p) {
  const char* type = p.http == 401   ? "authentication_error"
                     : p.http == 429 ? "rate_limit_error"
                     : p.http == 503 ? "service_unavailable_error"
                     : p.http >= 500 ? "server_error"
                                     : "invalid_request_error";
  json error = {{"message", p.message}, {"type", type}, {"param", p.param.empty() ? json() : json(p.param)},
                {"code", p.code.empty() ? json() : json(p.code)}};
  res.status = p.http;
  res.set_content(json{{"error", error}}.dump(), "application/json");
}

Problem FromStatus(const absl::Status& s) {
  Problem p;
  p.message = std::string(s.message());
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      p.http = 400;
      break;
    case absl::StatusCode::kUnauthenticated:
      p.http = 401;
      break;
    case absl::StatusCode::kNotFound:
      p.http = 404;
      break;
    case absl::StatusCode::kResourceExhausted:
      p.http = 429;
      break;
    case absl::StatusCode::kUnavailable:
      p.http = 503;
      break;
    case absl::StatusCode::kDeadlineExceeded:
      p.http = 504;
      break;
    default:
      p.http = 500;
  }
  return p;
}

// A request of either endpoint, turned into our terms.
struct Parsed {
  v1::GenerateRequest request;
  bool stream = false, include_usage = false;
  bool logprobs = false;  // report logprobs (completions: when "logprobs" is given)
  int top_logprobs = 0;
};

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
  bool Common(Parsed& p) {
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

std::string CompletionId(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  return absl::StrFormat("%s-%016x%08x", prefix, salt, ++counter);
}

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

json Usage(const Generation& g) {
  return {{"prompt_tokens", g.prompt_tokens()},
          {"completion_tokens", g.completion_tokens()},
          {"total_tokens", g.prompt_tokens() + g.completion_tokens()}};
}

json ByteList(const std::string& s) {
  json bytes = json::array();
  for (unsigned char c : s) bytes.push_back(static_cast<int>(c));
  return bytes;
}

class Api {
 public:
  Api(ClusterState& state, Metrics& metrics, const ModelConfig& config, const Tokenizer* tokenizer, OpenAiApiOptions options)
      : state_(state), metrics_(metrics), config_(config), tokenizer_(tokenizer), options_(std::move(options)) {}

  void Models(const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return;
    json model = {{"id", options_.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "daedalus"},
                  {"max_model_len", config_.max_position_embeddings}};
    res.set_content(json{{"object", "list"}, {"data", {model}}}.dump(), "application/json");
  }

  void Complete(const httplib::Request& req, httplib::Response& res, bool chat) {
    if (!Authorized(req, res)) return;
    Problem problem;
    json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object()) {
      metrics_.CountRequest("invalid_argument");
      return SendError(res, {400, "the body is not a JSON object", "", ""});
    }
    Parsed p;
    if (!(chat ? ParseChat(body, p, problem) : ParseCompletion(body, p, problem))) {
      if (problem.http == 400) metrics_.CountRequest("invalid_argument");
      return SendError(res, problem);
    }
    const Clock::time_point start = Clock::now(), admit_by = start + options_.queue_timeout;
    auto started = Generation::Start(state_, metrics_, config_, tokenizer_, p.request, admit_by, start);
    if (!started.ok()) return SendError(res, FromStatus(started.status()));
    std::shared_ptr<Generation> generation = std::move(*started);
    // Errors before the first token (not admitted in time, cluster lost) keep their HTTP status.
    if (absl::Status s = generation->WaitAdmitted(admit_by + std::chrono::seconds(5)); !s.ok()) {
      return SendError(res, FromStatus(s));
    }
    const std::string id = CompletionId(chat ? "chatcmpl" : "cmpl");
    if (p.stream) return Stream(res, generation, p, id, chat);
    // Whole answer.
    std::string text;
    json logprobs = LogprobsStart(chat);
    Generation::Delta delta;
    while (true) {
      if (!generation->Next(Clock::now() + std::chrono::milliseconds(100), delta)) continue;
      if (delta.finished && !delta.status.ok()) return SendError(res, FromStatus(delta.status));
      text += delta.text;
      if (p.logprobs) AddLogprobs(*generation, delta, p, chat, logprobs);
      if (delta.finished) break;
    }
    json choice = {{"index", 0}, {"finish_reason", FinishReason(delta.finish_reason)},
                   {"logprobs", p.logprobs ? logprobs : json()}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", text}};
    } else {
      choice["text"] = text;
    }
    json out = {{"id", id}, {"object", chat ? "chat.completion" : "text_completion"}, {"created", Now()},
                {"model", options_.model_name}, {"choices", {choice}}, {"usage", Usage(*generation)}};
    res.set_content(out.dump(), "application/json");
  }

 private:
  bool Authorized(const httplib::Request& req, httplib::Response& res) {
    if (options_.bearer_token.empty()) return true;
    const std::string header = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    if (header.rfind(prefix, 0) == 0 && SecretsEqual(header.substr(prefix.size()), options_.bearer_token)) return true;
    metrics_.CountRequest("unauthenticated");
    SendError(res, {401, header.empty() ? "this API needs a bearer token: \"Authorization: Bearer <token>\""
                                        : "the bearer token is not valid",
                    "", "invalid_api_key"});
    return false;
  }

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

  bool ParseCompletion(const json& body, Parsed& p, Problem& problem) {
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
        p.request.add_prompt_ids(id.get<int32_t>());
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

  bool ParseChat(const json& body, Parsed& p, Problem& problem) {
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
          if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string()) {
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
    if (p.logprobs) {
      p.top_logprobs = static_cast<int>(top);
      p.request.set_logprobs(std::max<int>(1, p.top_logprobs));
    }
    return true;
  }

  static std::string FinishReason(const std::string& ours) { return ours == "length" ? "length" : "stop"; }

  static json LogprobsStart(bool chat) {
    return chat ? json{{"content", json::array()}}
                : json{{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
                       {"text_offset", json::array()}};
  }

  void AddLogprobs(const Generation& g, const Generation::Delta& delta, const Parsed& p, bool chat, json& out) {
    for (const v1::GeneratedToken& t : delta.tokens) {
      const std::string text = g.TokenText(t.token_id());
      if (chat) {
        json top = json::array();
        for (int i = 0; i < t.top_logprobs_size() && i < p.top_logprobs; ++i) {
          const std::string s = g.TokenText(t.top_logprobs(i).token_id());
          top.push_back({{"token", s}, {"logprob", t.top_logprobs(i).logprob()}, {"bytes", ByteList(s)}});
        }
        out["content"].push_back({{"token", text}, {"logprob", t.logprob()}, {"bytes", ByteList(text)}, {"top_logprobs", top}});
      } else {
        json top = json::object();
        for (int i = 0; i < t.top_logprobs_size() && i < p.top_logprobs; ++i) {
          top[g.TokenText(t.top_logprobs(i).token_id())] = t.top_logprobs(i).logprob();
        }
        const int64_t offset = out["text_offset"].empty() ? 0
                                                          : out["text_offset"].back().get<int64_t>() +
                                                                static_cast<int64_t>(out["tokens"].back().get<std::string>().size());
        out["tokens"].push_back(text);
        out["token_logprobs"].push_back(t.logprob());
        out["top_logprobs"].push_back(top);
        out["text_offset"].push_back(offset);
      }
    }
  }

  void Stream(httplib::Response& res, std::shared_ptr<Generation> generation, const Parsed& p, const std::string& id,
              bool chat) {
    const int64_t created = Now();
    const std::string model = options_.model_name;
    auto chunk = [=](json choice) {
      json c = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                {"model", model}, {"choices", json::array({std::move(choice)})}};
      if (p.include_usage) c["usage"] = nullptr;
      return c;
    };
    auto state = std::make_shared<int>(0);  // 0: role not sent yet, 1: streaming, 2: done
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, generation, p, chat, chunk, state, id, created, model](size_t, httplib::DataSink& sink) {
          auto send = [&](const json& j) {
            const std::string line = "data: " + j.dump() + "\n\n";
            return sink.write(line.data(), line.size());
          };
          if (*state == 0 && chat) {
            if (!send(chunk({{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
                             {"finish_reason", nullptr}}))) {
              generation->Cancel();
              return false;
            }
          }
          *state = std::max(*state, 1);
          Generation::Delta delta;
          if (!generation->Next(Clock::now() + std::chrono::milliseconds(100), delta)) {
            if (!sink.is_writable()) {  // the client went away
              generation->Cancel();
              return false;
            }
            return true;
          }
          if (delta.finished && !delta.status.ok()) {
            const Problem e = FromStatus(delta.status);
            send({{"error", {{"message", e.message}, {"type", "server_error"}, {"param", nullptr}, {"code", e.http}}}});
            sink.done();
            return true;
          }
          json logprobs;
          if (p.logprobs) {
            logprobs = LogprobsStart(chat);
            AddLogprobs(*generation, delta, p, chat, logprobs);
          }
          if (!delta.text.empty() || (p.logprobs && !delta.tokens.empty())) {
            json choice = {{"index", 0}, {"logprobs", logprobs}, {"finish_reason", nullptr}};
            if (chat) {
              choice["delta"] = {{"content", delta.text}};
            } else {
              choice["text"] = delta.text;
            }
            if (!send(chunk(choice))) {
              generation->Cancel();
              return false;
            }
          }
          if (!delta.finished) return true;
          json last = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", FinishReason(delta.finish_reason)}};
          if (chat) {
            last["delta"] = json::object();
          } else {
            last["text"] = "";
          }
          send(chunk(last));
          if (p.include_usage) {
            send({{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                  {"model", model}, {"choices", json::array()}, {"usage", Usage(*generation)}});
          }
          const std::string done = "data: [DONE]\n\n";
          sink.write(done.data(), done.size());
          sink.done();
          *state = 2;
          return true;
        },
        [generation](bool success) {
          if (!success) generation->Cancel();
        });
  }

  ClusterState& state_;
  Metrics& metrics_;
  const ModelConfig& config_;
  const Tokenizer* tokenizer_;
  const OpenAiApiOptions options_;
};

}  // namespace

void AddOpenAiRoutes(httplib::Server& server, ClusterState& state, Metrics& metrics, const ModelConfig& config,
                     const Tokenizer* tokenizer, const OpenAiApiOptions& options) {
  auto api = std::make_shared<Api>(state, metrics, config, tokenizer, options);
  server.Get("/v1/models", [api](const httplib::Request& req, httplib::Response& res) { api->Models(req, res); });
  server.Post("/v1/completions",
              [api](const httplib::Request& req, httplib::Response& res) { api->Complete(req, res, /*chat=*/false); });
  server.Post("/v1/chat/completions",
              [api](const httplib::Request& req, httplib::Response& res) { api->Complete(req, res, /*chat=*/true); });
}

}  // namespace daedalus
