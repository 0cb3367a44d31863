// Checks a client's GenerateRequest against the model before anything is queued. The error
// (INVALID_ARGUMENT) names the field and says why.
#pragma once

#include "absl/status/status.h"
#include "core/model_config.h"
#include "proto/serving.pb.h"

namespace daedalus {

inline constexpr int kMaxLogprobs = 20;

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request, const ModelConfig& config);

}  // namespace daedalus
