// A field of the mapping that holds an address, from /proc/self/smaps: what the kernel says of
// our own memory (resident, on huge pages) in the tests that check how memory is paged.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace daedalus {

// The value (kB) of `field` ("Rss", "AnonHugePages", ...) for the mapping holding `at`; -1 where
// no mapping holds it.
inline long SmapsKbAround(const void* at, const std::string& field) {
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool inside = false;
  const auto a = reinterpret_cast<uintptr_t>(at);
  const std::string key = field + ":";
  while (std::getline(in, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find('-')) {
      inside = lo <= a && a < hi;
    } else if (inside && line.rfind(key, 0) == 0) {
      return std::atol(line.c_str() + key.size());
    }
  }
  return -1;
}

}  // namespace daedalus
