#include "coordinator/sharding.h"

#include <algorithm>

namespace daedalus {

ShardChoice ChooseWorker(const std::vector<ShardCandidate>& workers, int64_t need, int64_t prefix_route_slack) {
  int most_free = -1, holder = -1;
  int64_t longest = 0, least_running = 0;
  auto roomier = [&](int r, int than) {
    if (than < 0) return true;
    const ShardCandidate &a = workers[r], &b = workers[than];
    if (a.free_kv != b.free_kv) return a.free_kv > b.free_kv;
    if (a.running != b.running) return a.running < b.running;
    return a.cached_pages < b.cached_pages;
  };
  for (int r = 0; r < static_cast<int>(workers.size()); ++r) {
    const ShardCandidate& w = workers[r];
    if (w.free_kv < need) continue;
    least_running = most_free < 0 ? w.running : std::min(least_running, w.running);
    if (roomier(r, most_free)) most_free = r;
    if (w.prefix_pages > longest || (w.prefix_pages == longest && w.prefix_pages > 0 && roomier(r, holder))) {
      holder = r;
      longest = w.prefix_pages;
    }
  }
  if (holder >= 0 && workers[holder].running < least_running + prefix_route_slack) return {holder, true};
  return {most_free, false};
}

}  // namespace daedalus
