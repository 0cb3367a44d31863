// Reading prompt files (JSON lines) and writing results, for `run`.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine.h"

namespace daedalus {

// "1,2,3" → {1, 2, 3}; an error names the bad element.
absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& text);

// One line of a prompts file: {"id", "prompt_ids", "max_new_tokens", "temperature", "top_p",
// "top_k", "seed", "logprobs", "ignore_eos"}; absent fields take `defaults`. `id`, when given, receives the line's "id"
// even when the rest of the line is invalid, so errors can name the request.
absl::StatusOr<Request> ParseRequestLine(const std::string& line, const Request& defaults, std::string* id = nullptr);

nlohmann::ordered_json ResultJson(const Result& result);

}  // namespace daedalus
