#include "coordinator/validate.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace daedalus {

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& r, const ModelConfig& config) {
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(r.id().empty() ? "request" : absl::StrCat("request ", r.id()), ": ", parts...));
  };
  if (r.prompt_ids_size() == 0) return bad("prompt_ids is empty");
  for (int i = 0; i < r.prompt_ids_size(); ++i) {
    if (r.prompt_ids(i) < 0 || r.prompt_ids(i) >= config.vocab_size) {
      return bad("prompt_ids[", i, "] is ", r.prompt_ids(i), ", outside the vocabulary [0, ", config.vocab_size, ")");
    }
  }
  if (r.max_new_tokens() < 0) return bad("max_new_tokens is ", r.max_new_tokens(), ", must be >= 0");
  // Compared without adding: a max_new_tokens near 2^63 must not wrap the sum.
  if (r.max_new_tokens() > config.max_position_embeddings - r.prompt_ids_size()) {
    return bad("prompt (", r.prompt_ids_size(), " tokens) plus max_new_tokens (", r.max_new_tokens(),
               ") is over the model's context of ", config.max_position_embeddings, " tokens");
  }
  const v1::SamplingParams& s = r.sampling();
  if (!std::isfinite(s.temperature()) || s.temperature() < 0) {
    return bad("sampling.temperature is ", s.temperature(), ", must be finite and >= 0");
  }
  if (!(s.top_p() == 0 || (s.top_p() > 0 && s.top_p() <= 1))) {  // 0 is unset, meaning 1
    return bad("sampling.top_p is ", s.top_p(), ", must be in (0, 1]");
  }
  if (s.top_k() < 0) return bad("sampling.top_k is ", s.top_k(), ", must be >= 0");
  if (r.logprobs() < 0 || r.logprobs() > kMaxLogprobs) return bad("logprobs is ", r.logprobs(), ", must be in [0, ", kMaxLogprobs, "]");
  if (r.queue_timeout_ms() < 0) return bad("queue_timeout_ms is ", r.queue_timeout_ms(), ", must be >= 0");
  return absl::OkStatus();
}

}  // namespace daedalus
