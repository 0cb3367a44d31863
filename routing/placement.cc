#include "routing/placement.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace daedalus {
namespace {

// One copy of an expert waiting for a rank; `load` is the expert's load over its replica count.
struct Replica {
  int32_t expert;
  int index;
  double load;
};

// The state of the packing: what each rank holds, how full it is and how much load it serves.
struct Packing {
  std::vector<int> capacity;
  std::vector<double> load;
  std::vector<std::vector<Replica>> held;
  std::vector<std::vector<char>> holds;  // [world_size, n_experts]

  bool HasRoom(int r) const { return static_cast<int>(held[r].size()) < capacity[r]; }
  void Put(int r, const Replica& x) {
    held[r].push_back(x);
    load[r] += x.load;
    holds[r][x.expert] = 1;
  }
};

absl::Status Validate(int n_experts, int world_size, int redundant, const std::vector<double>& expert_load) {
  if (n_experts < 1) return absl::InvalidArgumentError(absl::StrCat("n_experts must be >= 1, found ", n_experts));
  if (world_size < 1) return absl::InvalidArgumentError(absl::StrCat("world_size must be >= 1, found ", world_size));
  // Replicas of one expert sit on distinct ranks, so each expert gains at most world_size - 1.
  const int64_t max_redundant = int64_t{n_experts} * (world_size - 1);
  if (redundant < 0 || redundant > max_redundant) {
    return absl::InvalidArgumentError(absl::StrCat("redundant must be in [0, ", max_redundant, "] for ", n_experts,
                                                   " experts over ", world_size, " ranks, found ", redundant));
  }
  if (!expert_load.empty() && expert_load.size() != static_cast<size_t>(n_experts)) {
    return absl::InvalidArgumentError(absl::StrCat("expert_load must be empty or have n_experts = ", n_experts,
                                                   " entries, found ", expert_load.size()));
  }
  for (size_t e = 0; e < expert_load.size(); ++e) {
    if (!std::isfinite(expert_load[e]) || expert_load[e] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert_load[", e, "] must be finite and >= 0, found ", expert_load[e]));
    }
  }
  return absl::OkStatus();
}

// Hands out extra replicas one at a time to the expert whose replicas are busiest: this is
// what minimises the hottest load-per-replica for a given replica budget.
std::vector<int> CountReplicas(const std::vector<double>& load, int world_size, int redundant) {
  std::vector<int> count(load.size(), 1);
  for (int i = 0; i < redundant; ++i) {
    int best = -1;
    for (size_t e = 0; e < load.size(); ++e) {
      if (count[e] >= world_size) continue;
      if (best < 0 || load[e] / count[e] > load[best] / count[best]) best = static_cast<int>(e);
    }
    ++count[best];  // Validate guarantees some expert still has room.
  }
  return count;
}

// Called when every rank with room already holds x.expert. A full rank s without the expert
// exists (x still lacks a rank), and it holds some expert f that a rank t with room lacks: t
// holds x.expert and fewer than capacity[t] <= capacity[s] + 1 experts, so t's other experts
// are fewer than s's. Moving f from s to t frees s for x. The lightest such f moves, to
// disturb the balance the least.
bool Repair(Packing& p, const Replica& x) {
  const int world = static_cast<int>(p.capacity.size());
  int t = 0;
  while (!p.HasRoom(t)) ++t;
  for (int s = 0; s < world; ++s) {
    if (p.holds[s][x.expert] || p.HasRoom(s)) continue;
    int pick = -1;
    for (size_t i = 0; i < p.held[s].size(); ++i) {
      const Replica& f = p.held[s][i];
      if (p.holds[t][f.expert]) continue;
      if (pick < 0 || f.load < p.held[s][pick].load ||
          (f.load == p.held[s][pick].load && f.expert < p.held[s][pick].expert)) {
        pick = static_cast<int>(i);
      }
    }
    if (pick < 0) continue;
    const Replica f = p.held[s][pick];
    p.held[s].erase(p.held[s].begin() + pick);
    p.load[s] -= f.load;
    p.holds[s][f.expert] = 0;
    p.Put(t, f);
    p.Put(s, x);
    return true;
  }
  return false;
}

// Greedy longest-processing-time packing: heaviest replica first onto the lightest rank that
// has room and lacks the expert.
absl::Status Pack(Packing& p, const std::vector<Replica>& replicas) {
  const int world = static_cast<int>(p.capacity.size());
  for (const Replica& x : replicas) {
    int best = -1;
    for (int r = 0; r < world; ++r) {
      if (!p.HasRoom(r) || p.holds[r][x.expert]) continue;
      if (best < 0 || p.load[r] < p.load[best]) best = r;
    }
    if (best >= 0) {
      p.Put(best, x);
    } else if (!Repair(p, x)) {
      // Unreachable when Validate passed (see Repair); reaching it is a bug here.
      return absl::InternalError(absl::StrCat("placement.cc: no rank can take a replica of expert ", x.expert));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int Placement::RankFor(int32_t expert, int64_t token, int64_t k) const {
  const std::vector<int>& ranks = replicas[expert];
  const int64_t n = static_cast<int64_t>(ranks.size());
  int64_t i = (token + k) % n;
  if (i < 0) i += n;
  return ranks[i];
}

bool Placement::Holds(int rank, int32_t expert) const {
  if (rank < 0 || rank >= static_cast<int>(experts_on.size())) return false;
  return std::binary_search(experts_on[rank].begin(), experts_on[rank].end(), expert);
}

double Placement::Imbalance(const std::vector<double>& expert_load) const {
  // Empty load means uniform, as in ComputePlacement.
  std::vector<double> rank_load(world_size, 0.0);
  double total = 0;
  for (size_t e = 0; e < replicas.size(); ++e) {
    const double load = expert_load.empty() ? 1.0 : (e < expert_load.size() ? expert_load[e] : 0.0);
    total += load;
    for (int r : replicas[e]) rank_load[r] += load / static_cast<double>(replicas[e].size());
  }
  if (total == 0) return 1.0;
  return *std::max_element(rank_load.begin(), rank_load.end()) / (total / world_size);
}

absl::StatusOr<Placement> ComputePlacement(int n_experts, int world_size, int redundant,
                                           const std::vector<double>& expert_load) {
  if (absl::Status s = Validate(n_experts, world_size, redundant, expert_load); !s.ok()) return s;
  const std::vector<double> load = expert_load.empty() ? std::vector<double>(n_experts, 1.0) : expert_load;
  const std::vector<int> count = CountReplicas(load, world_size, redundant);

  std::vector<Replica> replicas;
  for (int32_t e = 0; e < n_experts; ++e) {
    for (int i = 0; i < count[e]; ++i) replicas.push_back({e, i, load[e] / count[e]});
  }
  std::sort(replicas.begin(), replicas.end(), [](const Replica& a, const Replica& b) {
    if (a.load != b.load) return a.load > b.load;
    return a.expert != b.expert ? a.expert < b.expert : a.index < b.index;
  });

  // Slots per rank differ by at most one: the first (total % world) ranks take the extra.
  const int64_t total = int64_t{n_experts} + redundant;
  Packing p;
  p.capacity.resize(world_size);
  for (int r = 0; r < world_size; ++r) {
    p.capacity[r] = static_cast<int>(total / world_size + (r < total % world_size ? 1 : 0));
  }
  p.load.assign(world_size, 0.0);
  p.held.resize(world_size);
  p.holds.assign(world_size, std::vector<char>(n_experts, 0));
  if (absl::Status s = Pack(p, replicas); !s.ok()) return s;

  Placement out;
  out.world_size = world_size;
  out.replicas.resize(n_experts);
  out.experts_on.resize(world_size);
  for (int r = 0; r < world_size; ++r) {
    for (int32_t e = 0; e < n_experts; ++e) {
      if (!p.holds[r][e]) continue;
      out.experts_on[r].push_back(e);
      out.replicas[e].push_back(r);  // r ascends, so each list comes out sorted.
    }
  }
  return out;
}

}  // namespace daedalus
