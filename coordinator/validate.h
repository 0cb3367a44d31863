// Checks a client's GenerateRequest against the model before anything is queued. The error
// (INVALID_ARGUMENT) names the field and says why. Every client request, gRPC or HTTP, passes
// through PrepareGenerateRequest.
#pragma once

#include "absl/status/status.h"
#include "core/model_config.h"
#include "core/tokenizer.h"
#include "proto/serving.pb.h"

namespace daedalus {

inline constexpr int kMaxLogprobs = 20;

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request, const ModelConfig& config);

// Fills prompt_ids from prompt_text with `tokenizer` (null when the checkpoint has none: text
// requests get FAILED_PRECONDITION), checks the stop strings, then validates.
absl::Status PrepareGenerateRequest(const ModelConfig& config, const Tokenizer* tokenizer, v1::GenerateRequest& request);

}  // namespace daedalus
