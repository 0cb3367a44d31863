#include "planner/load_balance.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "routing/placement.h"

namespace daedalus {
namespace {

// Tokens whose routing is traced one by one per MoE layer, for the fan-out averages.
constexpr int kTracedTokens = 128;

// Picks `k` distinct indices from `candidates`, each draw in proportion to its weight among
// those left (sequential sampling without replacement).
void PickWithoutReplacement(std::vector<int>& candidates, const std::vector<double>& weight, int k,
                            std::mt19937_64& rng, std::vector<int>& out) {
  out.clear();
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  double total = 0;
  for (int c : candidates) total += weight[c];
  for (int pick = 0; pick < k && !candidates.empty(); ++pick) {
    double x = uniform(rng) * total;
    size_t i = 0;
    for (; i + 1 < candidates.size(); ++i) {
      x -= weight[candidates[i]];
      if (x < 0) break;
    }
    out.push_back(candidates[i]);
    total -= weight[candidates[i]];
    candidates[i] = candidates.back();
    candidates.pop_back();
  }
}

// A multinomial draw of `n` pairs over experts with probabilities `p` (summing to 1), as a
// chain of binomials; a binomial with at least 30 expected on either side is drawn from its
// normal approximation (the exact draw costs a log-gamma per call).
std::vector<double> DrawCounts(int64_t n, const std::vector<double>& p, std::mt19937_64& rng) {
  std::vector<double> counts(p.size(), 0.0);
  int64_t left = n;
  double mass = 1.0;
  for (size_t e = 0; e < p.size() && left > 0; ++e) {
    int64_t c = left;
    if (e + 1 < p.size()) {
      const double q = mass > 0 ? std::clamp(p[e] / mass, 0.0, 1.0) : 0.0;
      const double mean = static_cast<double>(left) * q, rest = static_cast<double>(left) - mean;
      if (mean >= 30 && rest >= 30) {
        const double draw = mean + std::sqrt(mean * (1.0 - q)) * std::normal_distribution<double>(0.0, 1.0)(rng);
        c = std::clamp<int64_t>(std::llround(draw), 0, left);
      } else {
        c = std::binomial_distribution<int64_t>(left, q)(rng);
      }
    }
    counts[e] = static_cast<double>(c);
    left -= c;
    mass -= p[e];
  }
  return counts;
}

}  // namespace

ExpertLoad SyntheticExpertLoad(const ModelConfig& config, double skew, uint64_t seed) {
  ExpertLoad load(config.num_hidden_layers);
  std::mt19937_64 rng(seed);
  const int64_t n = config.n_routed_experts;
  // A token picks num_experts_per_tok distinct experts, so no expert can take more than
  // 1 / num_experts_per_tok of the pairs: shares above that are capped and the excess spread
  // over the others in proportion.
  const double cap = 1.0 / static_cast<double>(config.num_experts_per_tok);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    if (!config.is_moe_layer(l)) continue;
    std::vector<int64_t> rank(n);
    std::iota(rank.begin(), rank.end(), 0);
    std::shuffle(rank.begin(), rank.end(), rng);
    std::vector<double> share(n);
    for (int64_t e = 0; e < n; ++e) share[e] = std::pow(static_cast<double>(rank[e] + 1), -skew);
    std::vector<char> capped(n, 0);
    for (bool changed = true; changed;) {
      changed = false;
      double fixed = 0, free = 0;
      for (int64_t e = 0; e < n; ++e) (capped[e] ? fixed : free) += capped[e] ? cap : share[e];
      for (int64_t e = 0; e < n; ++e) {
        if (capped[e]) continue;
        share[e] *= (1.0 - fixed) / free;
        if (share[e] > cap) {
          share[e] = cap;
          capped[e] = 1;
          changed = true;
        }
      }
    }
    for (int64_t e = 0; e < n; ++e) load[l].push_back(std::llround(1e9 * (capped[e] ? cap : share[e])));
  }
  return load;
}

absl::StatusOr<RoutingStats> SimulateRouting(const ModelConfig& config, const ExpertLoad& histogram, int ep,
                                             int ranks_per_node, int redundant, int64_t tokens_per_micro_batch,
                                             int samples, uint64_t seed) {
  const int n_experts = static_cast<int>(config.n_routed_experts);
  const int n_group = static_cast<int>(config.n_group);
  const int topk = static_cast<int>(config.num_experts_per_tok);
  const int topk_group = static_cast<int>(config.topk_group);
  if (ranks_per_node < 1 || ep % ranks_per_node != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ranks per node (", ranks_per_node, ") must divide EP ", ep));
  }
  const int nodes = ep / ranks_per_node;
  RoutingStats stats;
  // DeepSeek's EPLB keeps whole routing groups on a node when the groups spread evenly over
  // the nodes; otherwise experts are placed over all ranks at once.
  stats.hierarchical = nodes > 1 && n_group % nodes == 0 && redundant % nodes == 0;
  const int placement_rpn = stats.hierarchical ? ranks_per_node : 0;
  ASSIGN_OR_RETURN(std::vector<Placement> placed,
                   PlaceLayers(histogram, config.num_hidden_layers, n_experts, n_group, ep, placement_rpn, redundant));
  std::vector<Placement> placed_plain = placed;
  if (redundant > 0) {
    ASSIGN_OR_RETURN(placed_plain,
                     PlaceLayers(histogram, config.num_hidden_layers, n_experts, n_group, ep, placement_rpn, 0));
  }

  std::mt19937_64 rng(seed);
  stats.layer_imbalance.assign(config.num_hidden_layers, 1.0);
  double sum = 0, sum_expected = 0, sum_plain = 0, sum_expected_plain = 0;
  int64_t moe_layers = 0, traced = 0;
  const int64_t pairs = int64_t{ep} * tokens_per_micro_batch * topk;
  const int group_size = n_experts / n_group;
  std::vector<int> groups, chosen_groups, candidates, chosen;
  std::vector<int> node_seen(nodes), rank_seen(ep);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    if (!config.is_moe_layer(l)) continue;
    ++moe_layers;
    const Placement& p = placed[l];
    for (int r = 0; r < ep; ++r) {
      stats.max_experts_per_device = std::max<int64_t>(stats.max_experts_per_device, p.experts_on[r].size());
      stats.own_experts_per_device =
          std::max<int64_t>(stats.own_experts_per_device, placed_plain[l].experts_on[r].size());
    }
    std::vector<double> weight(n_experts, 1.0);
    if (l < static_cast<int64_t>(histogram.size()) && !histogram[l].empty()) {
      weight.assign(histogram[l].begin(), histogram[l].end());
    }
    double total = std::accumulate(weight.begin(), weight.end(), 0.0);
    if (total <= 0) {
      weight.assign(n_experts, 1.0);
      total = n_experts;
    }
    std::vector<double> share(n_experts);
    for (int e = 0; e < n_experts; ++e) share[e] = weight[e] / total;
    // An expert the histogram never saw can still be picked, rarely: keeps the draws defined.
    std::vector<double> pick_weight(n_experts);
    for (int e = 0; e < n_experts; ++e) pick_weight[e] = share[e] + 1e-9;

    sum_expected += p.Imbalance(weight);
    sum_expected_plain += placed_plain[l].Imbalance(weight);
    double layer = 0, layer_plain = 0;
    for (int s = 0; s < samples; ++s) {
      const std::vector<double> counts = DrawCounts(pairs, share, rng);
      layer += p.Imbalance(counts);
      layer_plain += placed_plain[l].Imbalance(counts);
    }
    stats.layer_imbalance[l] = samples > 0 ? layer / samples : p.Imbalance(weight);
    sum += stats.layer_imbalance[l];
    sum_plain += samples > 0 ? layer_plain / samples : placed_plain[l].Imbalance(weight);

    // Trace tokens: group-limited top-k drawn by popularity, then each slot's rank.
    std::vector<double> group_weight(n_group, 0.0);
    for (int e = 0; e < n_experts; ++e) group_weight[e / group_size] += pick_weight[e];
    for (int t = 0; t < kTracedTokens; ++t, ++traced) {
      const int source = static_cast<int>(traced % ep);
      const int source_node = source / ranks_per_node;
      groups.resize(n_group);
      std::iota(groups.begin(), groups.end(), 0);
      PickWithoutReplacement(groups, group_weight, topk_group, rng, chosen_groups);
      candidates.clear();
      for (int g : chosen_groups)
        for (int e = g * group_size; e < (g + 1) * group_size; ++e) candidates.push_back(e);
      PickWithoutReplacement(candidates, pick_weight, topk, rng, chosen);
      std::fill(node_seen.begin(), node_seen.end(), 0);
      std::fill(rank_seen.begin(), rank_seen.end(), 0);
      for (int k = 0; k < static_cast<int>(chosen.size()); ++k) {
        const int rank = p.RankFor(chosen[k], traced, k);
        const int node = rank / ranks_per_node;
        if (rank != source) (node == source_node ? stats.local_node_pairs : stats.remote_node_pairs) += 1;
        node_seen[node] = 1;
        rank_seen[rank] = 1;
      }
      // Node-deduplicated dispatch: a token enters each node it needs once (at its own rank on
      // its own node, at the same local index elsewhere) and is forwarded over the link to the
      // other ranks it needs there.
      for (int n = 0; n < nodes; ++n) {
        if (!node_seen[n]) continue;
        if (n != source_node) stats.remote_nodes += 1;
        const int entry = n == source_node ? source : n * ranks_per_node + source % ranks_per_node;
        for (int r = n * ranks_per_node; r < (n + 1) * ranks_per_node; ++r) {
          if (rank_seen[r] && r != entry) stats.intra_node_copies += 1;
        }
      }
    }
  }
  if (moe_layers > 0) {
    stats.imbalance = sum / moe_layers;
    stats.imbalance_expected = sum_expected / moe_layers;
    stats.imbalance_no_redundant = sum_plain / moe_layers;
    stats.imbalance_expected_no_redundant = sum_expected_plain / moe_layers;
  }
  if (traced > 0) {
    stats.remote_node_pairs /= traced;
    stats.local_node_pairs /= traced;
    stats.remote_nodes /= traced;
    stats.intra_node_copies /= traced;
  }
  return stats;
}

}  // namespace daedalus
