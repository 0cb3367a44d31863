// The body of an OpenAI-compatible request (POST /v1/completions or /v1/chat/completions),
// turned into a GenerateRequest, or the Problem to answer with: an HTTP status and OpenAI's
// error fields, naming the offending field. No I/O: the HTTP layer (openai_api.h) calls it,
// and so does the fuzzer.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "core/model_config.h"
#include "core/tokenizer.h"
#include "proto/serving.pb.h"

namespace daedalus {

// What was wrong with a request, for OpenAI's error body.
struct Problem {
  int http = 400;
  std::string message;
  std::string param;  // the offending field, or empty
  std::string code;   // e.g. "invalid_api_key", or empty
};

// A request of either endpoint, in our terms. `request` still needs PrepareGenerateRequest
// (coordinator/validate.h), which Generation::Start applies.
struct OpenAiRequest {
  v1::GenerateRequest request;
  bool stream = false, include_usage = false;
  bool logprobs = false;  // report logprobs (completions: when "logprobs" is given)
  int top_logprobs = 0;
  // A chat request that named no max_tokens: request.max_new_tokens is the default, which the
  // API lowers to what the KV cache can hold beside the prompt (FitDefaultMaxTokens).
  bool max_tokens_defaulted = false;
};

// When `r`'s max_tokens is the default, lowers it so that the prompt and the answer fit in
// `longest_sequence` KV tokens (Cluster::LongestSequence), as they do in the context window; a
// prompt that leaves no room keeps the default, and admission names the shortfall.
void FitDefaultMaxTokens(OpenAiRequest& r, int64_t longest_sequence);

struct OpenAiParseOptions {
  std::string model_name;                  // accepted in "model", beside "daedalus"
  int64_t default_chat_max_tokens = 1024;  // when a chat request names no max_tokens
};

// Parses `body` (JSON) of a chat (`chat`) or completions request into `out`; the Problem when
// it is not acceptable. `tokenizer` may be null (then chat requests are refused).
std::optional<Problem> ParseOpenAiRequest(std::string_view body, bool chat, const ModelConfig& config,
                                          const Tokenizer* tokenizer, const OpenAiParseOptions& options,
                                          OpenAiRequest& out);

}  // namespace daedalus
