// The OpenAI-compatible HTTP API on the coordinator: GET /v1/models, POST /v1/completions and
// POST /v1/chat/completions (with "stream": true as server-sent events ending in
// "data: [DONE]"), beside /health and /metrics. Errors use OpenAI's JSON shape
// {"error": {"message", "type", "param", "code"}} with 400 (invalid field), 401 (bearer token),
// 404 (unknown model), 429 (queue limit or admission timeout), 503 (cluster not serving).
// Chat prompts use DeepSeek-V3's chat format (Tokenizer::EncodeChat) for model_type deepseek_v3.
#pragma once

#include <chrono>
#include <string>

#include "coordinator/cluster.h"
#include "core/tokenizer.h"

namespace httplib {
class Server;
}

namespace daedalus {

struct OpenAiApiOptions {
  std::string model_name;    // what /v1/models lists; "daedalus" is accepted as well
  std::string bearer_token;  // empty: none
  std::chrono::milliseconds queue_timeout{30000};
  // When a chat request names no max_tokens (less where the KV cache holds less beside the prompt).
  int64_t default_chat_max_tokens = 1024;
};

// Adds the /v1 routes. Everything passed must outlive the server.
void AddOpenAiRoutes(httplib::Server& server, Cluster& state, Metrics& metrics, const ModelConfig& config,
                     const Tokenizer* tokenizer, const OpenAiApiOptions& options);

}  // namespace daedalus
