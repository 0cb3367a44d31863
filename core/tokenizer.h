// A Hugging Face `tokenizer.json` byte-level BPE tokenizer (the DeepSeek, GPT-2, Llama-3
// family), encoding and decoding exactly as the `tokenizers` library does:
//   added tokens (matched first, leftmost-longest) → pre-tokenizer (Sequence of Split regexes,
//   PCRE2 with Unicode properties, and ByteLevel) → BPE by merge rank → post-processor
//   (TemplateProcessing: e.g. BOS first).
// Decoding maps byte-level characters back to bytes and replaces invalid UTF-8 with U+FFFD.
// Anything else in the file (other normalizers, models or decoders) is refused at load with
// an error naming it. Immutable after loading; safe to use from many threads.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace daedalus {

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant"
  std::string content;
};

class Tokenizer {
 public:
  ~Tokenizer();
  // `dir`/tokenizer.json, and `dir`/tokenizer_config.json when present (bos/eos tokens).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& dir);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(const nlohmann::json& tokenizer,
                                                             const nlohmann::json& config, const std::string& source);

  // InvalidArgument when `text` is not valid UTF-8 (naming the byte offset).
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens = true) const;
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens = true) const;

  // The bytes a token adds to decoded text (before the U+FFFD repair), "" for a skipped special.
  std::string TokenBytes(int32_t id, bool skip_special_tokens = true) const;
  bool IsSpecial(int32_t id) const;
  std::optional<int32_t> TokenId(const std::string& token) const;
  int64_t size() const { return static_cast<int64_t>(id_to_token_.size()); }  // highest id + 1
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }

  // The pre-tokenizer alone: the pieces BPE runs on, as UTF-8 (before the byte-level map);
  // INVALID_ARGUMENT where a pattern's matcher gives up on the text (its match limit).
  absl::StatusOr<std::vector<std::string>> PreTokenize(std::string_view text) const;

  // DeepSeek-V3's chat format: BOS, the system messages joined by "\n\n", then each user
  // message as "<｜User｜>" + content and each assistant message as "<｜Assistant｜>" + content +
  // "<｜end▁of▁sentence｜>", and "<｜Assistant｜>" to prompt the reply.
  absl::StatusOr<std::vector<int32_t>> EncodeChat(const std::vector<ChatMessage>& messages) const;

  struct Regex;  // a compiled PCRE2 pattern (defined in the .cc)

 private:
  struct Split {
    std::shared_ptr<Regex> regex;
    bool isolated = true;  // matches become pieces of their own; false: matches are removed
    bool invert = false;
  };
  struct AddedToken {
    std::string content;
    int32_t id;
    bool special;
  };
  Tokenizer() = default;
  void EncodeWord(const std::string& word, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::map<std::pair<int32_t, int32_t>, std::pair<int32_t, int32_t>> merges_;  // (a, b) → (rank, merged id)
  bool ignore_merges_ = false;
  std::vector<Split> splits_;
  bool byte_level_ = false, add_prefix_space_ = false;
  std::vector<AddedToken> added_;  // longest first
  std::vector<std::vector<const AddedToken*>> added_by_first_byte_;  // [256], longest first
  std::unordered_map<int32_t, bool> added_special_;
  std::vector<int32_t> prefix_, suffix_;  // TemplateProcessing around a single sequence
  std::optional<int32_t> bos_id_, eos_id_;
};

// GPT-2's byte-level alphabet: the printable character (UTF-8) that stands for `byte`.
const std::string& ByteLevelChar(uint8_t byte);

// Decodes a token stream piece by piece without ever emitting half a UTF-8 character: the
// concatenation of what Push and Finish return equals Decode of all the ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}
  std::string Push(int32_t id);
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  const bool skip_special_;
  std::string pending_;  // bytes of a character not yet complete
};

}  // namespace daedalus
