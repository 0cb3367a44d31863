#include "cli/request_io.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace daedalus {

absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) return absl::InvalidArgumentError(absl::StrCat("\"", part, "\" is not a token id"));
    ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<Request> ParseRequestLine(const std::string& line, const Request& defaults, std::string* id) {
  using nlohmann::json;
  json j = json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  Request r = defaults;
  try {
    if (j.contains("id")) r.id = j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump();
    if (id != nullptr) *id = r.id;
    if (!j.contains("prompt_ids") || !j["prompt_ids"].is_array()) {
      return absl::InvalidArgumentError("\"prompt_ids\" must be an array of token ids");
    }
    r.prompt_ids.clear();
    for (const json& id : j["prompt_ids"]) {
      if (!id.is_number_integer()) return absl::InvalidArgumentError("\"prompt_ids\" holds a non-integer");
      r.prompt_ids.push_back(id.get<int32_t>());
    }
    auto number = [&](const char* key, auto& out) -> absl::Status {
      if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
      if (!j[key].is_number()) return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a number"));
      out = j[key].get<std::remove_reference_t<decltype(out)>>();
      return absl::OkStatus();
    };
    for (absl::Status s : {number("max_new_tokens", r.max_new_tokens), number("temperature", r.sampling.temperature),
                           number("top_p", r.sampling.top_p), number("top_k", r.sampling.top_k),
                           number("seed", r.sampling.seed), number("logprobs", r.logprobs)}) {
      if (!s.ok()) return s;
    }
    if (j.contains("ignore_eos")) {
      if (!j["ignore_eos"].is_boolean()) return absl::InvalidArgumentError("\"ignore_eos\" must be true or false");
      r.stop_at_eos = !j["ignore_eos"].get<bool>();
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(e.what());
  }
  return r;
}

nlohmann::ordered_json ResultJson(const Result& r) {
  nlohmann::ordered_json j;
  j["id"] = r.id;
  if (!r.status.ok()) {
    j["error"] = std::string(r.status.message());
    return j;
  }
  j["generated_ids"] = r.generated_ids;
  j["finish_reason"] = r.finish_reason;
  if (!r.logprobs.empty()) {  // as `generate --json` prints them
    nlohmann::ordered_json logprobs = nlohmann::ordered_json::array();
    for (const TokenOut& t : r.logprobs) {
      nlohmann::ordered_json top = nlohmann::ordered_json::array();
      for (size_t i = 0; i < t.top_ids.size() && i < t.top_logprobs.size(); ++i) {
        top.push_back({{"token_id", t.top_ids[i]}, {"logprob", t.top_logprobs[i]}});
      }
      logprobs.push_back({{"token_id", t.token}, {"logprob", t.logprob}, {"top_logprobs", top}});
    }
    j["logprobs"] = logprobs;
  }
  return j;
}

}  // namespace daedalus
