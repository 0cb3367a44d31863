#include "coordinator/openai_api.h"

#include <atomic>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/admission.h"
#include "coordinator/auth.h"
#include "coordinator/generation.h"
#include "coordinator/openai_request.h"
#include "coordinator/outcome.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace daedalus {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

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
    case absl::StatusCode::kResourceExhausted:  // busy: retry later; or it can never fit: don't
      p.http = Admission::NeverFits(s) ? 400 : 429;
      if (p.http == 400) p.code = "context_length_exceeded";
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
          {"total_tokens", g.prompt_tokens() + g.completion_tokens()},
          {"prompt_tokens_details", {{"cached_tokens", g.cached_tokens()}}}};
}

json ByteList(const std::string& s) {
  json bytes = json::array();
  for (unsigned char c : s) bytes.push_back(static_cast<int>(c));
  return bytes;
}

class Api {
 public:
  Api(Cluster& state, Metrics& metrics, const ModelConfig& config, const Tokenizer* tokenizer, OpenAiApiOptions options)
      : state_(state), metrics_(metrics), config_(config), tokenizer_(tokenizer), options_(std::move(options)) {
    parse_options_.model_name = options_.model_name;
    parse_options_.default_chat_max_tokens = options_.default_chat_max_tokens;
  }

  void Models(const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return;
    json model = {{"id", options_.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "daedalus"},
                  {"max_model_len", config_.max_position_embeddings}};
    res.set_content(json{{"object", "list"}, {"data", {model}}}.dump(), "application/json");
  }

  void Complete(const httplib::Request& req, httplib::Response& res, bool chat) {
    if (!Authorized(req, res)) return;
    OpenAiRequest p;
    if (std::optional<Problem> problem = ParseOpenAiRequest(req.body, chat, config_, tokenizer_, parse_options_, p)) {
      if (problem->http == 400) metrics_.CountRequest("invalid_argument");
      return SendError(res, *problem);
    }
    FitDefaultMaxTokens(p, state_.LongestSequence());
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
    int64_t text_offset = 0;
    Generation::Delta delta;
    while (true) {
      if (!generation->Next(Clock::now() + std::chrono::milliseconds(100), delta)) continue;
      if (delta.finished && !delta.status.ok()) return SendError(res, FromStatus(delta.status));
      text += delta.text;
      if (p.logprobs) AddLogprobs(*generation, delta, p, chat, text_offset, logprobs);
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

  static std::string FinishReason(const std::string& ours) { return ours == "length" ? "length" : "stop"; }

  static json LogprobsStart(bool chat) {
    return chat ? json{{"content", json::array()}}
                : json{{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
                       {"text_offset", json::array()}};
  }

  // `text_offset`: where the next token's text starts in the whole completion (completions'
  // text_offset), carried from chunk to chunk when streaming.
  void AddLogprobs(const Generation& g, const Generation::Delta& delta, const OpenAiRequest& p, bool chat,
                   int64_t& text_offset, json& out) {
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
        out["tokens"].push_back(text);
        out["token_logprobs"].push_back(t.logprob());
        out["top_logprobs"].push_back(top);
        out["text_offset"].push_back(text_offset);
        text_offset += static_cast<int64_t>(text.size());
      }
    }
  }

  void Stream(httplib::Response& res, std::shared_ptr<Generation> generation, const OpenAiRequest& p, const std::string& id,
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
    auto text_offset = std::make_shared<int64_t>(0);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, generation, p, chat, chunk, state, text_offset, id, created, model](size_t, httplib::DataSink& sink) {
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
            AddLogprobs(*generation, delta, p, chat, *text_offset, logprobs);
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

  Cluster& state_;
  Metrics& metrics_;
  const ModelConfig& config_;
  const Tokenizer* tokenizer_;
  const OpenAiApiOptions options_;
  OpenAiParseOptions parse_options_;
};

}  // namespace

void AddOpenAiRoutes(httplib::Server& server, Cluster& state, Metrics& metrics, const ModelConfig& config,
                     const Tokenizer* tokenizer, const OpenAiApiOptions& options) {
  auto api = std::make_shared<Api>(state, metrics, config, tokenizer, options);
  server.Get("/v1/models", [api](const httplib::Request& req, httplib::Response& res) { api->Models(req, res); });
  server.Post("/v1/completions",
              [api](const httplib::Request& req, httplib::Response& res) { api->Complete(req, res, /*chat=*/false); });
  server.Post("/v1/chat/completions",
              [api](const httplib::Request& req, httplib::Response& res) { api->Complete(req, res, /*chat=*/true); });
}

}  // namespace daedalus
