// UTF-8 as text decoders need it: lossy decoding that replaces each maximal invalid subpart
// with U+FFFD (the rule of Rust's String::from_utf8_lossy, so Hugging Face tokenizers and we
// agree), and where a byte string stops being complete.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace daedalus {

// `bytes` with every maximal invalid subpart replaced by U+FFFD.
std::string Utf8Lossy(std::string_view bytes);
// The length of the longest prefix of `bytes` that does not end inside a character that more
// bytes could still complete (an invalid sequence counts as complete: it decodes to U+FFFD).
size_t Utf8CompletePrefix(std::string_view bytes);
// The offset of the first byte that is not valid UTF-8, or npos.
size_t Utf8FirstInvalid(std::string_view bytes);

}  // namespace daedalus
