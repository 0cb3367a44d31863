// Attention sharding: which worker takes a new sequence (its attention and latent KV cache live
// there for its whole life). Pure: fed a snapshot of the workers.
//  - Only workers with `need` tokens of KV free can take it.
//  - With prefix caching, the worker holding the longest cached (or being computed) prefix of
//    the prompt takes it, unless it runs `prefix_route_slack` or more sequences beyond the least
//    busy worker that could.
//  - Otherwise, and between equal prefixes: the most free KV, then the fewest running
//    sequences, then the fewest cached pages (so that distinct prefixes spread), then the
//    lowest rank.
#pragma once

#include <cstdint>
#include <vector>

namespace daedalus {

struct ShardCandidate {
  int64_t free_kv = 0;       // tokens of KV capacity not reserved
  int64_t running = 0;       // sequences admitted there
  int64_t cached_pages = 0;  // full pages it holds cached, whatever prompt
  int64_t prefix_pages = 0;  // leading pages of this prompt it holds or is computing
};

struct ShardChoice {
  int rank = -1;           // -1: no worker has room
  bool by_prefix = false;  // chosen for the prefix it holds
};

ShardChoice ChooseWorker(const std::vector<ShardCandidate>& workers, int64_t need, int64_t prefix_route_slack);

}  // namespace daedalus
