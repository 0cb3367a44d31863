#include "worker/make_tokenizer.h"

#include <fstream>
#include <map>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/tokenizer.h"
#include "nlohmann/json.hpp"

namespace daedalus {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// DeepSeek-V3's pre-tokenizer: digits in runs of up to three, CJK runs, then words,
// punctuation and whitespace.
const char* const kSplitPatterns[] = {
    R"(\p{N}{1,3})",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
};

const char* const kSpecial[] = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜User｜>",
                                "<｜Assistant｜>"};

// What the merges are learned from: a little English, code, numbers, Chinese and Japanese.
constexpr char kCorpus[] = R"(The quick brown fox jumps over the lazy dog. A Mixture-of-Experts model routes each token to
a few of its many experts, so every token touches only a small share of the weights. Multi-head
latent attention stores one compressed latent vector per token instead of full keys and values;
the cache is small, and the attention is computed in latent space during decoding. The
coordinator admits requests, chooses the worker whose cache has the most free space, and streams
tokens back to the client as they are produced. Workers exchange the activations of routed tokens
with an all-to-all, then combine the weighted results of the experts in a fixed order.
Hello, world! How are you today? I am fine, thank you. What time is it? It is 10:45 in the
morning, on the 28th of November, 2026. The price is $1,234.56 and the order number is 987654321.
Please read the documentation, then run the tests: they should all pass before you submit.
#include <cstdio>
int main(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) std::printf("%d: %s\n", i, argv[i]);
  return 0;
}
def forward(self, x, positions):
    h = self.embed_tokens(x)
    for layer in self.layers:
        h = layer(h, positions)
    return self.norm(h)
{"model": "daedalus", "messages": [{"role": "user", "content": "Hello"}], "stream": true}
深度求索发布了新的混合专家模型。每个词元只会激活一小部分专家，因此推理的计算量很小。
注意力机制把键和值压缩成一个潜在向量，缓存因此变得很小。我们今天在机器上测试了这个系统。
東京は日本の首都です。今日はとても良い天気ですね。私はコンピュータの研究をしています。
カタカナとひらがなと漢字を使って日本語を書きます。ありがとうございました。
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828 42 -17 1e-5 0x7fff
Emoji 🙂 and symbols ∑ ∫ ≤ ≥ → ← © ® ™ — “quoted” ‘text’ … café naïve résumé Straße
)";

using Word = std::vector<std::string>;  // byte-level symbols

ordered_json Skeleton() {
  ordered_json pre = ordered_json::array();
  for (const char* p : kSplitPatterns) {
    pre.push_back({{"type", "Split"}, {"pattern", {{"Regex", p}}}, {"behavior", "Isolated"}, {"invert", false}});
  }
  pre.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}});
  ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = ordered_json::array();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", pre}};
  const std::string bos = kSpecial[0];
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"pair",
       {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
        {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
        {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
      {"special_tokens", {{bos, {{"id", bos}, {"ids", {0}}, {"tokens", {bos}}}}}}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  return j;
}

}  // namespace

absl::Status WriteTokenizer(const ModelConfig& config, const std::string& dir) {
  const int64_t n_special = std::size(kSpecial), vocab_size = config.vocab_size;
  if (config.bos_token_id.value_or(0) != 0 || config.eos_token_id.value_or(1) != 1) {
    return absl::InvalidArgumentError("the generated tokenizer puts BOS at id 0 and EOS at id 1; the config says otherwise");
  }
  if (vocab_size < n_special + 256) {
    return absl::InvalidArgumentError(absl::StrCat("vocab_size ", vocab_size, " is too small for a byte-level tokenizer (at least ",
                                                   n_special + 256, ")"));
  }
  ordered_json j = Skeleton();
  ordered_json vocab = ordered_json::object();
  std::vector<std::string> tokens;
  for (const char* s : kSpecial) tokens.push_back(s);
  for (int b = 0; b < 256; ++b) tokens.push_back(ByteLevelChar(static_cast<uint8_t>(b)));

  // Learn merges on the corpus, pre-tokenized exactly as encoding will do it.
  ordered_json skeleton_vocab = ordered_json::object();
  for (size_t i = 0; i < tokens.size(); ++i) skeleton_vocab[tokens[i]] = i;
  ordered_json probe = j;
  probe["model"] = {{"type", "BPE"}, {"vocab", skeleton_vocab}, {"merges", ordered_json::array()}};
  ASSIGN_OR_RETURN(auto pre, Tokenizer::FromJson(json::parse(probe.dump()), json::object(), "generated tokenizer"));
  std::map<Word, int64_t> words;
  ASSIGN_OR_RETURN(const std::vector<std::string> pieces, pre->PreTokenize(kCorpus));
  for (const std::string& piece : pieces) {
    Word w;
    for (unsigned char b : piece) w.push_back(ByteLevelChar(b));
    ++words[w];
  }
  std::set<std::string> known(tokens.begin(), tokens.end());
  ordered_json merges = ordered_json::array();
  const int64_t max_merges = vocab_size - static_cast<int64_t>(tokens.size());
  while (static_cast<int64_t>(merges.size()) < max_merges) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;
    for (const auto& [w, n] : words)
      for (size_t i = 0; i + 1 < w.size(); ++i) pairs[{w[i], w[i + 1]}] += n;
    const std::pair<std::string, std::string>* best = nullptr;
    int64_t best_count = 1;  // a merge must be seen at least twice
    for (const auto& [p, n] : pairs) {
      if (n > best_count) {  // ties: the first in order (the map is sorted)
        best = &p;
        best_count = n;
      }
    }
    if (best == nullptr) break;
    const std::string a = best->first, b = best->second, ab = a + b;
    merges.push_back(a + " " + b);
    if (known.insert(ab).second) tokens.push_back(ab);
    std::map<Word, int64_t> next;
    for (const auto& [w, n] : words) {
      Word m;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
          m.push_back(ab);
          ++i;
        } else {
          m.push_back(w[i]);
        }
      }
      next[m] += n;
    }
    words = std::move(next);
  }
  // Pad to vocab_size with placeholder special tokens, as DeepSeek-V3 does.
  for (int64_t n = 0; static_cast<int64_t>(tokens.size()) < vocab_size; ++n) {
    tokens.push_back(absl::StrCat("<｜place▁holder▁no▁", n, "｜>"));
  }
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const bool special = i < static_cast<size_t>(n_special) || tokens[i].rfind("<｜place▁holder▁no▁", 0) == 0;
    if (!special) continue;
    j["added_tokens"].push_back({{"id", i}, {"content", tokens[i]}, {"single_word", false}, {"lstrip", false},
                                 {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  j["model"] = {{"type", "BPE"},          {"dropout", nullptr},          {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
                {"byte_fallback", false}, {"ignore_merges", false},      {"vocab", vocab},
                {"merges", merges}};
  auto added = [](const char* content) {
    return ordered_json{{"__type", "AddedToken"}, {"content", content}, {"lstrip", false}, {"normalized", true},
                        {"rstrip", false}, {"single_word", false}};
  };
  ordered_json cfg = {
      {"add_bos_token", true},
      {"add_eos_token", false},
      {"bos_token", added(kSpecial[0])},
      {"eos_token", added(kSpecial[1])},
      {"pad_token", added(kSpecial[2])},
      {"clean_up_tokenization_spaces", false},
      {"legacy", true},
      {"model_max_length", config.max_position_embeddings},
      {"sp_model_kwargs", ordered_json::object()},
      {"unk_token", nullptr},
      {"tokenizer_class", "LlamaTokenizerFast"},
      {"chat_template",
       "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
       "{% set ns.system = ns.system + ('\n\n' if ns.system else '') + m['content'] %}{% endif %}{% endfor %}{{ ns.system }}"
       "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
       "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}"
       "{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"}};
  for (const auto& [name, value] : {std::pair{"tokenizer.json", j.dump(1)}, std::pair{"tokenizer_config.json", cfg.dump(1)}}) {
    std::ofstream out(dir + "/" + name);
    out << value << "\n";
    if (!out) return absl::InternalError(absl::StrCat(dir, "/", name, ": write failed"));
  }
  return absl::OkStatus();
}

}  // namespace daedalus
