// Shared by the transport tests: payload words that name their sender, destination, round
// and index, and one all-to-all checked word by word against that origin.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "routing/transport.h"

namespace daedalus::testing {

inline uint64_t Word(int src, int dst, int round, uint64_t index) {
  return (uint64_t(src) << 56) | (uint64_t(dst) << 48) | (uint64_t(round & 0xffff) << 32) | index;
}
inline std::string Describe(uint64_t w) {
  return absl::StrCat("{src ", w >> 56, ", dst ", (w >> 48) & 0xff, ", round ", (w >> 32) & 0xffff, ", index ",
                      w & 0xffffffff, "}");
}

// How many words `src` sends to `dst` in `round`.
using SizeFn = std::function<size_t(int src, int dst, int round)>;

// One AllToAllV whose received words are checked against their origin.
inline void ExchangeAndCheck(Transport& t, int round, const SizeFn& words) {
  const int me = t.rank(), world = t.world_size();
  std::vector<uint64_t> send;
  std::vector<size_t> send_bytes(world);
  for (int dst = 0; dst < world; ++dst) {
    const size_t n = words(me, dst, round);
    for (size_t i = 0; i < n; ++i) send.push_back(Word(me, dst, round, i));
    send_bytes[dst] = n * sizeof(uint64_t);
  }
  std::vector<uint8_t> recv;
  std::vector<size_t> recv_bytes;
  const std::string what = absl::StrCat("round ", round);
  absl::Status s = t.AllToAllV(send.data(), send_bytes, recv, recv_bytes, what);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(recv_bytes.size(), size_t(world));
  size_t offset = 0;
  for (int src = 0; src < world; ++src) {
    const size_t n = words(src, me, round);
    ASSERT_EQ(recv_bytes[src], n * sizeof(uint64_t)) << "rank " << me << " from rank " << src << ", " << what;
    for (size_t i = 0; i < n; ++i) {
      uint64_t w;
      std::memcpy(&w, recv.data() + offset + i * sizeof(uint64_t), sizeof w);
      ASSERT_EQ(w, Word(src, me, round, i)) << "rank " << me << " got " << Describe(w) << ", expected "
                                            << Describe(Word(src, me, round, i));
    }
    offset += recv_bytes[src];
  }
  EXPECT_EQ(offset, recv.size());
}

}  // namespace daedalus::testing
