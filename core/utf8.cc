#include "core/utf8.h"

#include <cstdint>

namespace daedalus {

namespace {

// The valid length of the sequence starting at bytes[i]: > 0 a whole character; < 0 the
// number of bytes (negated) forming a maximal invalid or incomplete subpart; `incomplete` says
// whether the subpart ran into the end of the input (more bytes could complete it).
int Sequence(std::string_view s, size_t i, bool& incomplete) {
  incomplete = false;
  const uint8_t b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) return 1;
  int need;
  uint8_t lo = 0x80, hi = 0xbf;  // the range of the second byte
  if (b >= 0xc2 && b <= 0xdf) {
    need = 1;
  } else if (b >= 0xe0 && b <= 0xef) {
    need = 2;
    if (b == 0xe0) lo = 0xa0;
    if (b == 0xed) hi = 0x9f;
  } else if (b >= 0xf0 && b <= 0xf4) {
    need = 3;
    if (b == 0xf0) lo = 0x90;
    if (b == 0xf4) hi = 0x8f;
  } else {
    return -1;
  }
  for (int k = 1; k <= need; ++k) {
    if (i + k >= s.size()) {
      incomplete = true;
      return -k;
    }
    const uint8_t c = static_cast<uint8_t>(s[i + k]);
    const bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xbf);
    if (!ok) return -k;
  }
  return need + 1;
}

}  // namespace

std::string Utf8Lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    bool incomplete;
    const int n = Sequence(s, i, incomplete);
    if (n > 0) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\xef\xbf\xbd";
      i += -n;
    }
  }
  return out;
}

size_t Utf8CompletePrefix(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    bool incomplete;
    const int n = Sequence(s, i, incomplete);
    if (n < 0 && incomplete) return i;
    i += n > 0 ? n : -n;
  }
  return s.size();
}

size_t Utf8FirstInvalid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    bool incomplete;
    const int n = Sequence(s, i, incomplete);
    if (n < 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

}  // namespace daedalus
