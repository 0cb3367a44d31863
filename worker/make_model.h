// Writes a seeded random-weight checkpoint in the published Hugging Face DeepSeek-V3 layout.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "core/dtype.h"
#include "core/model_config.h"

namespace daedalus {

struct MakeModelOptions {
  uint64_t seed = 7;
  DType dtype = DType::kBF16;  // kF8E4M3: projections in FP8 with 128×128 block scales
  // Above this many bytes the weights are split into model-0000N-of-0000M.safetensors shards
  // with a model.safetensors.index.json.
  int64_t shard_bytes = int64_t{400} << 20;
  bool config_only = false;  // write config.json and the tokenizer, no weights
};

// Weights are drawn so activations stay O(1): projections uniform with std 1/sqrt(in),
// embeddings std 1, norms near 1, a small correction bias. The same seed gives the same
// float weights whatever the dtype, so f32, bf16 and fp8 checkpoints are comparable.
absl::Status MakeModel(const ModelConfig& config, const MakeModelOptions& options, const std::string& dir);

}  // namespace daedalus
