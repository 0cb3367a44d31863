// Model presets for make-model: tiny (tests), small (demo), bench (speed figures).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "core/model_config.h"

namespace daedalus {

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);

}  // namespace daedalus
