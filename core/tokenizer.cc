#include "core/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <queue>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/utf8.h"

namespace daedalus {

namespace {

using nlohmann::json;

// GPT-2's byte ↔ character map: printable bytes stand for themselves, the rest are shifted to
// U+0100 and up, so every byte string is a printable string.
struct ByteMap {
  std::string byte_to_char[256];
  std::unordered_map<std::string, uint8_t> char_to_byte;
  ByteMap() {
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      const int cp = printable ? b : next++;
      std::string utf8;
      if (cp < 0x80) {
        utf8 = std::string(1, static_cast<char>(cp));
      } else {
        utf8 += static_cast<char>(0xc0 | (cp >> 6));
        utf8 += static_cast<char>(0x80 | (cp & 0x3f));
      }
      byte_to_char[b] = utf8;
      char_to_byte[utf8] = static_cast<uint8_t>(b);
    }
  }
};

const ByteMap& Bytes() {
  static const ByteMap* map = new ByteMap();
  return *map;
}

// The characters (as UTF-8 strings) of a valid UTF-8 string.
std::vector<std::string> Chars(std::string_view s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const uint8_t b = static_cast<uint8_t>(s[i]);
    const size_t n = b < 0x80 ? 1 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
    out.emplace_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// The GPT-2 pre-tokenizer pattern of ByteLevel(use_regex = true).
constexpr char kGpt2Pattern[] = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

const std::string& ByteLevelChar(uint8_t byte) { return Bytes().byte_to_char[byte]; }

struct Tokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
  std::string pattern;
  // Non-overlapping matches, leftmost first: [start, end) byte offsets. An error of the matcher
  // (its match or depth limit) is one, not the end of the matches: the rest of the text would
  // silently stay one piece.
  absl::StatusOr<std::vector<std::pair<size_t, size_t>>> FindAll(std::string_view s) const {
    std::vector<std::pair<size_t, size_t>> out;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
    size_t at = 0;
    while (at <= s.size()) {
      const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), at, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        pcre2_match_data_free(md);
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        return absl::InvalidArgumentError(absl::StrCat("pre-tokenizer regex ", pattern, " on ", s.size(),
                                                       " bytes of text: ", reinterpret_cast<const char*>(message)));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[1] == ov[0]) {  // an empty match: step one character
        if (ov[0] >= s.size()) break;
        const uint8_t b = static_cast<uint8_t>(s[ov[0]]);
        at = ov[0] + (b < 0x80 ? 1 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4);
        continue;
      }
      out.emplace_back(ov[0], ov[1]);
      at = ov[1];
    }
    pcre2_match_data_free(md);
    return out;
  }
};

namespace {

absl::StatusOr<std::shared_ptr<Tokenizer::Regex>> Compile(const std::string& pattern, const std::string& source) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                                   &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    return absl::InvalidArgumentError(absl::StrCat(source, ": pre-tokenizer regex at offset ", offset, ": ",
                                                   reinterpret_cast<const char*>(message)));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // a speed-up where available; matching works without
  auto regex = std::make_shared<Tokenizer::Regex>();
  regex->code = code;
  regex->pattern = pattern;
  return regex;
}

std::string TokenContent(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content")) return j["content"].get<std::string>();
  return "";
}

}  // namespace

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir) {
  const std::string path = dir + "/tokenizer.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open (the checkpoint has no tokenizer)"));
  json tokenizer = json::parse(in, nullptr, false);
  if (tokenizer.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  json config = json::object();
  std::ifstream cin(dir + "/tokenizer_config.json");
  if (cin) {
    config = json::parse(cin, nullptr, false);
    if (config.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(dir, "/tokenizer_config.json: not valid JSON"));
  }
  return FromJson(tokenizer, config, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const json& j, const json& config, const std::string& source) {
  auto t = std::unique_ptr<Tokenizer>(new Tokenizer());
  auto bad = [&](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(source, ": ", parts...)); };
  try {
    const json& model = j.at("model");
    if (model.value("type", "BPE") != "BPE") return bad("model type \"", model["type"].get<std::string>(), "\" is not supported (BPE only)");
    // contains() first: operator[] of a const json on a missing key is undefined behaviour.
    if (model.contains("continuing_subword_prefix") && !model.at("continuing_subword_prefix").is_null() &&
        !model.at("continuing_subword_prefix").get<std::string>().empty()) {
      return bad("BPE continuing_subword_prefix is not supported");
    }
    if (model.value("byte_fallback", false)) return bad("BPE byte_fallback is not supported");
    t->ignore_merges_ = model.value("ignore_merges", false);
    // Token ids as integers in [0, kMaxTokenId): a float or a huge id must not reach the
    // narrowing conversion or size the id table (found by tokenizer_fuzz).
    constexpr int64_t kMaxTokenId = int64_t{1} << 21;  // the largest published vocabularies hold ~256K
    std::string id_problem;
    auto token_id = [&](const json& v, const std::string& what) -> int32_t {
      if (!v.is_number_integer() || (v.is_number_unsigned() ? v.get<uint64_t>() >= uint64_t{kMaxTokenId}
                                                            : v.get<int64_t>() < 0 || v.get<int64_t>() >= kMaxTokenId)) {
        if (id_problem.empty()) id_problem = absl::StrCat(what, " has id ", v.dump(), ", not an integer in [0, ", kMaxTokenId, ")");
        return 0;
      }
      return static_cast<int32_t>(v.get<int64_t>());
    };
    int32_t max_id = -1;
    for (const auto& [token, id] : model.at("vocab").items()) {
      t->vocab_[token] = token_id(id, absl::StrCat("token \"", token, "\""));
      max_id = std::max(max_id, t->vocab_[token]);
    }
    for (const json& a : j.value("added_tokens", json::array())) {
      const int32_t id = token_id(a.at("id"), "an added token");
      const std::string content = a.at("content").get<std::string>();
      t->added_.push_back({content, id, a.value("special", false)});
      t->added_special_[id] = a.value("special", false);
      t->vocab_.emplace(content, id);
      max_id = std::max(max_id, id);
    }
    if (!id_problem.empty()) return bad(id_problem);
    t->id_to_token_.assign(max_id + 1, "");
    for (const auto& [token, id] : t->vocab_) {
      if (id < 0) return bad("token \"", token, "\" has negative id ", id);
      t->id_to_token_[id] = token;
    }
    for (const auto& a : t->added_) t->id_to_token_[a.id] = a.content;
    std::stable_sort(t->added_.begin(), t->added_.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    t->added_by_first_byte_.assign(256, {});
    for (const AddedToken& a : t->added_) {
      if (!a.content.empty()) t->added_by_first_byte_[static_cast<uint8_t>(a.content[0])].push_back(&a);
    }
    int32_t rank = 0;
    for (const json& m : model.at("merges")) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ', 1);
        if (space == std::string::npos) return bad("merge \"", s, "\" is not two tokens");
        a = s.substr(0, space);
        b = s.substr(space + 1);
      } else {
        a = m.at(0).get<std::string>();
        b = m.at(1).get<std::string>();
      }
      auto ia = t->vocab_.find(a), ib = t->vocab_.find(b), iab = t->vocab_.find(a + b);
      if (ia == t->vocab_.end() || ib == t->vocab_.end() || iab == t->vocab_.end()) {
        return bad("merge ", rank, " (\"", a, "\" \"", b, "\") names a token missing from the vocabulary");
      }
      t->merges_.emplace(std::make_pair(ia->second, ib->second), std::make_pair(rank++, iab->second));
    }

    const json normalizer = j.value("normalizer", json());
    if (!normalizer.is_null() && !(normalizer.value("type", "") == "Sequence" && normalizer.value("normalizers", json::array()).empty())) {
      return bad("normalizer \"", normalizer.value("type", "?"), "\" is not supported");
    }
    std::vector<json> pre;
    const json p = j.value("pre_tokenizer", json());
    if (!p.is_null()) {
      if (p.value("type", "") == "Sequence") {
        for (const json& q : p.at("pretokenizers")) pre.push_back(q);
      } else {
        pre.push_back(p);
      }
    }
    for (const json& q : pre) {
      const std::string type = q.value("type", "");
      if (type == "Split") {
        Split s;
        const json& pattern = q.at("pattern");
        std::string regex;
        if (pattern.contains("Regex")) {
          regex = pattern["Regex"].get<std::string>();
        } else {  // a literal string: quote it
          regex = "\\Q" + pattern.at("String").get<std::string>() + "\\E";
        }
        ASSIGN_OR_RETURN(s.regex, Compile(regex, source));
        const std::string behavior = q.value("behavior", "Isolated");
        if (behavior != "Isolated" && behavior != "Removed") return bad("Split behavior \"", behavior, "\" is not supported");
        s.isolated = behavior == "Isolated";
        s.invert = q.value("invert", false);
        t->splits_.push_back(s);
      } else if (type == "ByteLevel") {
        t->byte_level_ = true;
        t->add_prefix_space_ = q.value("add_prefix_space", false);
        if (q.value("use_regex", true)) {
          Split s;
          ASSIGN_OR_RETURN(s.regex, Compile(kGpt2Pattern, source));
          t->splits_.push_back(s);
        }
      } else {
        return bad("pre-tokenizer \"", type, "\" is not supported");
      }
    }
    if (!t->byte_level_) return bad("only byte-level BPE tokenizers are supported (no ByteLevel pre-tokenizer)");
    // Byte-level BPE starts every word from its bytes' characters: all 256 must be tokens
    // (found by tokenizer_fuzz: a missing one threw from Encode).
    for (int b = 0; b < 256; ++b) {
      if (!t->vocab_.count(Bytes().byte_to_char[b])) {
        return bad("the vocabulary lacks the byte-level token \"", Bytes().byte_to_char[b], "\" (byte ", b,
                   "); a byte-level BPE needs all 256");
      }
    }
    const json decoder = j.value("decoder", json());
    if (decoder.is_null() || decoder.value("type", "") != "ByteLevel") return bad("the decoder must be ByteLevel");

    const json post = j.value("post_processor", json());
    if (!post.is_null()) {
      std::vector<json> posts = post.value("type", "") == "Sequence" ? post.at("processors").get<std::vector<json>>() : std::vector<json>{post};
      for (const json& q : posts) {
        const std::string type = q.value("type", "");
        if (type == "ByteLevel") continue;  // offsets only
        if (type != "TemplateProcessing") return bad("post-processor \"", type, "\" is not supported");
        bool after = false;
        for (const json& piece : q.at("single")) {
          if (piece.contains("Sequence")) {
            after = true;
            continue;
          }
          const std::string name = piece.at("SpecialToken").at("id").get<std::string>();
          const json& ids = q.at("special_tokens").at(name).at("ids");
          for (const json& id : ids) {
            const int32_t v = token_id(id, absl::StrCat("post-processor token ", name));
            if (!id_problem.empty()) return bad(id_problem);
            if (v >= t->size()) return bad("post-processor token ", name, " has id ", v, ", past the vocabulary");
            (after ? t->suffix_ : t->prefix_).push_back(v);
          }
        }
      }
    }
    auto id_of = [&](const json& token) -> std::optional<int32_t> {
      auto it = t->vocab_.find(TokenContent(token));
      if (it == t->vocab_.end()) return std::nullopt;
      return it->second;
    };
    if (config.contains("bos_token")) t->bos_id_ = id_of(config["bos_token"]);
    if (config.contains("eos_token")) t->eos_id_ = id_of(config["eos_token"]);
  } catch (const json::exception& e) {
    return bad(e.what());
  }
  return t;
}

absl::StatusOr<std::vector<std::string>> Tokenizer::PreTokenize(std::string_view text) const {
  std::vector<std::string> pieces = {std::string(text)};
  if (add_prefix_space_ && !text.empty() && text[0] != ' ') pieces[0] = " " + pieces[0];
  for (const Split& split : splits_) {
    std::vector<std::string> next;
    for (const std::string& piece : pieces) {
      size_t at = 0;
      auto add = [&](size_t from, size_t to, bool matched) {
        if (to <= from) return;
        const bool keep = split.isolated || (matched == split.invert);
        if (keep) next.push_back(piece.substr(from, to - from));
      };
      ASSIGN_OR_RETURN(const auto matches, split.regex->FindAll(piece));
      for (const auto& [start, end] : matches) {
        add(at, start, false);
        add(start, end, true);
        at = end;
      }
      add(at, piece.size(), false);
    }
    pieces = std::move(next);
  }
  return pieces;
}

void Tokenizer::EncodeWord(const std::string& word, std::vector<int32_t>& out) const {
  // The word's bytes as byte-level characters, one symbol each.
  std::vector<int32_t> symbols;
  std::string mapped;
  for (unsigned char b : word) mapped += Bytes().byte_to_char[b];
  if (ignore_merges_) {
    if (auto it = vocab_.find(mapped); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  for (unsigned char b : word) symbols.push_back(vocab_.at(Bytes().byte_to_char[b]));
  // Merge the lowest-ranked adjacent pair, leftmost first, until none applies: a heap of
  // candidate pairs keyed by (rank, position of the left symbol), stale ones skipped, so a long
  // word costs O(n log n) rather than a rescan per merge (a 1 MB prompt_text of one repeated
  // word would otherwise hold a coordinator thread for hours). Merged symbols keep the left
  // position, so the smallest position is the leftmost pair, as in the plain loop.
  const int n = static_cast<int>(symbols.size());
  std::vector<int> next(n), prev(n);
  for (int i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t left, right, merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto offer = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    auto it = merges_.find({symbols[pos], symbols[next[pos]]});
    if (it != merges_.end()) heap.push({it->second.first, pos, symbols[pos], symbols[next[pos]], it->second.second});
  };
  for (int i = 0; i + 1 < n; ++i) offer(i);
  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int right = next[c.pos];
    if (!alive[c.pos] || right < 0 || symbols[c.pos] != c.left || symbols[right] != c.right) continue;  // stale
    symbols[c.pos] = c.merged;
    alive[right] = false;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    offer(prev[c.pos]);
    offer(c.pos);
  }
  for (int i = 0; i < n; ++i)
    if (alive[i]) out.push_back(symbols[i]);
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  if (size_t bad = Utf8FirstInvalid(text); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 (byte ", bad, ")"));
  }
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = prefix_;
  auto encode_plain = [&](std::string_view segment) -> absl::Status {
    ASSIGN_OR_RETURN(const std::vector<std::string> pieces, PreTokenize(segment));
    for (const std::string& piece : pieces) EncodeWord(piece, ids);
    return absl::OkStatus();
  };
  // Added tokens first: leftmost, then longest.
  size_t at = 0, plain_from = 0;
  while (at < text.size()) {
    const AddedToken* hit = nullptr;
    for (const AddedToken* a : added_by_first_byte_[static_cast<uint8_t>(text[at])]) {
      if (text.compare(at, a->content.size(), a->content) == 0) {
        hit = a;
        break;  // longest first
      }
    }
    if (hit == nullptr) {
      ++at;
      continue;
    }
    RETURN_IF_ERROR(encode_plain(text.substr(plain_from, at - plain_from)));
    ids.push_back(hit->id);
    at += hit->content.size();
    plain_from = at;
  }
  RETURN_IF_ERROR(encode_plain(text.substr(plain_from)));
  if (add_special_tokens) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  auto it = added_special_.find(id);
  return it != added_special_.end() && it->second;
}

std::optional<int32_t> Tokenizer::TokenId(const std::string& token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::TokenBytes(int32_t id, bool skip_special_tokens) const {
  if (id < 0 || id >= size()) return "";
  if (skip_special_tokens && IsSpecial(id)) return "";
  const std::string& token = id_to_token_[id];
  // A token whose characters are all byte-level stands for those bytes; any other (an added
  // token such as "<｜User｜>") for its own UTF-8, as the ByteLevel decoder does.
  std::string bytes;
  for (const std::string& c : Chars(token)) {
    auto it = Bytes().char_to_byte.find(c);
    if (it == Bytes().char_to_byte.end()) return token;
    bytes += static_cast<char>(it->second);
  }
  return bytes;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) bytes += TokenBytes(id, skip_special_tokens);
  return Utf8Lossy(bytes);
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodeChat(const std::vector<ChatMessage>& messages) const {
  std::string system, text;
  for (const ChatMessage& m : messages) {
    if (m.role == "system") {
      absl::StrAppend(&system, system.empty() ? "" : "\n\n", m.content);
    } else if (m.role == "user") {
      absl::StrAppend(&text, "<｜User｜>", m.content);
    } else if (m.role == "assistant") {
      absl::StrAppend(&text, "<｜Assistant｜>", m.content, "<｜end▁of▁sentence｜>");
    } else {
      return absl::InvalidArgumentError(absl::StrCat("message role \"", m.role, "\": expected system, user or assistant"));
    }
  }
  text += "<｜Assistant｜>";
  std::vector<int32_t> ids;
  if (bos_id_) ids.push_back(*bos_id_);
  ASSIGN_OR_RETURN(std::vector<int32_t> rest, Encode(system + text, /*add_special_tokens=*/false));
  ids.insert(ids.end(), rest.begin(), rest.end());
  return ids;
}

std::string StreamDecoder::Push(int32_t id) {
  pending_ += tokenizer_.TokenBytes(id, skip_special_);
  const size_t complete = Utf8CompletePrefix(pending_);
  std::string out = Utf8Lossy(std::string_view(pending_).substr(0, complete));
  pending_.erase(0, complete);
  return out;
}

std::string StreamDecoder::Finish() {
  std::string out = Utf8Lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace daedalus
