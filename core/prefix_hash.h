// Content names of full KV-cache pages: page i of a token sequence is named by a hash chain over
// its token ids and the name of page i - 1, so one 64-bit value stands for a whole prefix. The
// same function on every process (workers name their cached pages, the coordinator the pages of
// a prompt); a name is a lookup key only, and a hit is confirmed against the token ids.
#pragma once

#include <cstdint>

namespace daedalus {

constexpr uint64_t kRootPageHash = 0x6a09e667f3bcc908ull;  // the name "before" page 0

// splitmix64's finaliser: every input bit moves every output bit.
constexpr uint64_t MixHash(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The name of a page holding tokens[0, n) whose previous page is named `parent`.
inline uint64_t PageHash(uint64_t parent, const int32_t* tokens, int64_t n) {
  uint64_t h = MixHash(parent ^ static_cast<uint64_t>(n));
  for (int64_t i = 0; i < n; ++i) h = MixHash(h + 0x9e3779b97f4a7c15ull + static_cast<uint32_t>(tokens[i]));
  return h;
}

}  // namespace daedalus
