// The tokenizer make-model writes beside the weights: a byte-level BPE in Hugging Face's
// tokenizer.json layout with DeepSeek-V3's pre-tokenizer, special tokens and chat tokens,
// trained on a small built-in multilingual corpus, padded to the config's vocab_size with
// placeholder special tokens (as DeepSeek-V3's own vocabulary is). So every generated
// checkpoint is complete and the cluster speaks text.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "core/model_config.h"

namespace daedalus {

// Writes `dir`/tokenizer.json and `dir`/tokenizer_config.json. Needs bos_token_id 0 and
// eos_token_id 1 (as DeepSeek-V3) and a vocab_size of at least 261 (5 special + 256 bytes).
absl::Status WriteTokenizer(const ModelConfig& config, const std::string& dir);

}  // namespace daedalus
