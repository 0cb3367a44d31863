// Attention sharding as a table: workers' free KV, running sequences, cached pages and the
// prompt's prefix each holds, and the worker chosen.
#include "coordinator/sharding.h"

#include <gtest/gtest.h>

namespace daedalus {
namespace {

TEST(Sharding, ChoiceTable) {
  struct Row {
    const char* what;
    std::vector<ShardCandidate> workers;  // {free_kv, running, cached_pages, prefix_pages}
    int64_t need, slack;
    int rank;
    bool by_prefix;
  };
  const Row rows[] = {
      {"no worker", {}, 64, 8, -1, false},
      {"none has room", {{100, 0, 0, 0}, {63, 0, 0, 0}}, 128, 8, -1, false},
      {"the most free KV", {{1000, 0, 0, 0}, {2000, 5, 0, 0}}, 64, 8, 1, false},
      {"equal KV: the fewest running", {{1000, 3, 0, 0}, {1000, 1, 0, 0}}, 64, 8, 1, false},
      {"equal KV and running: the fewest cached pages", {{1000, 1, 9, 0}, {1000, 1, 2, 0}}, 64, 8, 1, false},
      {"all equal: the lowest rank", {{1000, 1, 2, 0}, {1000, 1, 2, 0}}, 64, 8, 0, false},
      {"room only on the busier one", {{10, 0, 0, 0}, {500, 7, 0, 0}}, 64, 8, 1, false},
      {"the longest prefix wins over more free KV", {{4000, 0, 0, 0}, {1000, 2, 0, 3}, {1000, 0, 0, 2}}, 64, 8, 1, true},
      {"equal prefixes: the roomier holder", {{1000, 2, 0, 3}, {3000, 2, 0, 3}}, 64, 8, 1, true},
      {"the holder is slack busier than the least busy: by room", {{1000, 0, 0, 0}, {4000, 8, 0, 4}}, 64, 8, 1, false},
      {"... and one fewer is still within the slack", {{1000, 0, 0, 0}, {4000, 7, 0, 4}}, 64, 8, 1, true},
      {"the holder lacks room: by room among the rest", {{1000, 0, 0, 0}, {50, 0, 0, 4}, {2000, 1, 0, 0}}, 64, 8, 2, false},
      {"the least busy counts only workers with room", {{10, 0, 0, 0}, {4000, 8, 0, 4}, {3000, 7, 0, 0}}, 64, 2, 1, true},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.what);
    const ShardChoice c = ChooseWorker(r.workers, r.need, r.slack);
    EXPECT_EQ(c.rank, r.rank);
    EXPECT_EQ(c.by_prefix, r.by_prefix);
  }
}

}  // namespace
}  // namespace daedalus
