// Bytes as a tokenizer.json, then (after the first NUL byte, if any) text to encode with it.
// An accepted tokenizer encodes any valid UTF-8 into ids it can decode, and refuses invalid
// UTF-8 with an error; decoding any ids never fails.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "core/tokenizer.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* begin = reinterpret_cast<const char*>(data);
  const char* nul = static_cast<const char*>(std::memchr(begin, 0, size));
  const std::string_view json_text(begin, nul ? static_cast<size_t>(nul - begin) : size);
  const std::string_view text = nul ? std::string_view(nul + 1, size - json_text.size() - 1) : std::string_view("Hello, wörld 123!");
  const nlohmann::json j = nlohmann::json::parse(json_text, nullptr, false);
  if (j.is_discarded()) return 0;
  const nlohmann::json config = {{"bos_token", "<s>"}, {"eos_token", {{"content", "</s>"}}}};
  auto tokenizer = daedalus::Tokenizer::FromJson(j, config, "tokenizer.json");
  if (!tokenizer.ok()) return 0;
  const daedalus::Tokenizer& t = **tokenizer;
  auto ids = t.Encode(text);
  if (ids.ok()) {
    for (int32_t id : *ids) FUZZ_EXPECT(id >= 0 && id < t.size());
    (void)t.Decode(*ids, false);
    daedalus::StreamDecoder stream(t);
    for (int32_t id : *ids) (void)stream.Push(id);
    (void)stream.Finish();
  }
  (void)t.EncodeChat({{"system", std::string(text)}, {"user", "hi"}});
  std::vector<int32_t> raw;
  for (size_t i = 0; i + 4 <= text.size() && raw.size() < 64; i += 4) {
    int32_t id;
    std::memcpy(&id, text.data() + i, 4);
    raw.push_back(id);
  }
  (void)t.Decode(raw, true);
  return 0;
}
