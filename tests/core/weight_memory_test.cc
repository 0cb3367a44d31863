#include "core/weight_memory.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/core/smaps.h"

namespace daedalus {
namespace {

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;

// As the CLI starts itself (cli/huge_pages.h): every block below is advised for huge pages.
const bool kAsked = setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1", 1) == 0;

void Fill(const WeightBuffer& b, uint8_t seed) {
  for (size_t i = 0; i < b.size(); ++i) b.data()[i] = static_cast<uint8_t>(seed + i * 7);
}
bool Holds(const WeightBuffer& b, uint8_t seed) {
  for (size_t i = 0; i < b.size(); ++i)
    if (b.data()[i] != static_cast<uint8_t>(seed + i * 7)) return false;
  return true;
}

TEST(WeightMemory, BuffersAreAlignedApartAndKeepTheirBytesWhileOthersComeAndGo) {
  std::vector<WeightBuffer> kept;
  for (int i = 0; i < 64; ++i) {
    WeightBuffer b(1000 + 4093 * i);  // odd sizes: each start is rounded up, never shared
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
    EXPECT_EQ(b.size(), 1000u + 4093u * i);
    Fill(b, static_cast<uint8_t>(i));
    kept.push_back(std::move(b));
  }
  for (size_t i = 0; i < kept.size(); i += 2) kept[i] = WeightBuffer();  // freed between live ones
  for (int i = 0; i < 16; ++i) {
    WeightBuffer b(3 << 20);  // a routed expert's projection
    Fill(b, 200);
    kept.push_back(std::move(b));
  }
  for (size_t i = 1; i < 64; i += 2) EXPECT_TRUE(Holds(kept[i], static_cast<uint8_t>(i))) << i;
  for (size_t i = 64; i < kept.size(); ++i) EXPECT_TRUE(Holds(kept[i], 200)) << i;
  // No two live buffers overlap.
  for (size_t i = 0; i < kept.size(); ++i)
    for (size_t j = i + 1; j < kept.size(); ++j) {
      if (kept[i].data() == nullptr || kept[j].data() == nullptr) continue;
      const bool apart = kept[i].data() + kept[i].size() <= kept[j].data() ||
                         kept[j].data() + kept[j].size() <= kept[i].data();
      EXPECT_TRUE(apart) << i << " and " << j;
    }
}

TEST(WeightMemory, AMoveKeepsTheBytesWhereTheyAre) {
  WeightBuffer a(12345);
  Fill(a, 9);
  uint8_t* at = a.data();
  WeightBuffer b(std::move(a));
  EXPECT_EQ(b.data(), at);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.size(), 0u);
  EXPECT_TRUE(Holds(b, 9));
}

TEST(WeightMemory, ALargeBufferStartsOnAHugePage) {
  WeightBuffer big(40 << 20);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data()) % kHugePage, 0u);
  Fill(big, 3);
  EXPECT_TRUE(Holds(big, 3));
}

// The resident pages of [begin, end): mincore over whole 4 KB pages.
size_t ResidentPages(uintptr_t begin, uintptr_t end) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> in((end - begin + page - 1) / page);
  EXPECT_EQ(mincore(reinterpret_cast<void*>(begin), end - begin, in.data()), 0);
  size_t n = 0;
  for (unsigned char c : in) n += c & 1;
  return n;
}

TEST(WeightMemory, AFreedBufferGivesBackTheWholeHugePagesInsideIt) {
  WeightBuffer before(4096), middle(9 << 20), after(4096);  // the neighbours keep the block mapped
  Fill(middle, 1);
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(middle.data()) + kHugePage - 1) / kHugePage * kHugePage,
                  end = (reinterpret_cast<uintptr_t>(middle.data()) + middle.size()) / kHugePage * kHugePage;
  ASSERT_GE(end - begin, 3 * kHugePage);
  EXPECT_EQ(ResidentPages(begin, end) * static_cast<size_t>(sysconf(_SC_PAGESIZE)), end - begin);
  middle = WeightBuffer();
  EXPECT_EQ(ResidentPages(begin, end), 0u);
}

std::string ThpMode() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  std::getline(in, line);
  const size_t open = line.find('['), close = line.find(']');
  return open != std::string::npos && close > open ? line.substr(open + 1, close - open - 1) : "";
}

TEST(WeightMemory, ProjectionsOfAMegabyteLieOnHugePages) {
  ASSERT_TRUE(kAsked && HugePagesAsked());
  const std::string mode = ThpMode();
  if (mode != "always" && mode != "madvise") GTEST_SKIP() << "transparent huge pages are " << mode;
  // 24 projections of 1 MB, as a small model's routed experts: malloc gives each a mapping
  // of its own, too small for one huge page.
  std::vector<WeightBuffer> w;
  for (int i = 0; i < 24; ++i) {
    w.emplace_back(1 << 20);
    Fill(w.back(), 5);
  }
  long huge = 0;
  for (const WeightBuffer& b : w) huge = std::max(huge, SmapsKbAround(b.data(), "AnonHugePages"));
  EXPECT_GE(huge, 16 << 10) << "kB of the largest mapping holding them on huge pages";
}

TEST(WeightMemory, ThreadsCarveBuffersTogether) {
  constexpr int kThreads = 4, kEach = 200;
  std::vector<std::vector<WeightBuffer>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&got, t] {
      for (int i = 0; i < kEach; ++i) {
        got[t].emplace_back(512 + 977 * ((i * 13 + t) % 41));
        Fill(got[t].back(), static_cast<uint8_t>(t * 31 + i));
      }
    });
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t)
    for (int i = 0; i < kEach; ++i) EXPECT_TRUE(Holds(got[t][i], static_cast<uint8_t>(t * 31 + i))) << t << "/" << i;
}

}  // namespace
}  // namespace daedalus
