#include "routing/gate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace daedalus {

GateParams GateParams::FromConfig(const ModelConfig& c) {
  GateParams p;
  p.n_routed_experts = c.n_routed_experts;
  p.num_experts_per_tok = c.num_experts_per_tok;
  const bool greedy = c.topk_method == "greedy";
  p.n_group = greedy ? 1 : c.n_group;
  p.topk_group = greedy ? 1 : c.topk_group;
  p.sigmoid = c.scoring_func == "sigmoid";
  p.group_top2_sum = c.topk_method == "noaux_tc";
  p.norm_topk_prob = c.norm_topk_prob;
  p.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
  return p;
}

void Route(const GateParams& p, const float* logits, const float* bias, int64_t n_tokens, int32_t* expert_ids,
           float* weights) {
  const int64_t E = p.n_routed_experts, K = p.num_experts_per_tok;
  const int64_t group_size = E / p.n_group;
  std::vector<float> scores(E), choice(E), group_score(p.n_group);
  std::vector<int32_t> order(E), groups(p.n_group);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* l = logits + t * E;
    if (p.sigmoid) {
      for (int64_t e = 0; e < E; ++e) scores[e] = 1.0f / (1.0f + std::exp(-l[e]));
    } else {
      const float max = *std::max_element(l, l + E);
      float sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += scores[e] = std::exp(l[e] - max);
      for (int64_t e = 0; e < E; ++e) scores[e] /= sum;
    }
    for (int64_t e = 0; e < E; ++e) choice[e] = bias ? scores[e] + bias[e] : scores[e];
    // Higher value first; equal values: lower id first.
    auto better = [](const std::vector<float>& v) {
      return [&v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
    };
    if (p.n_group > 1) {
      for (int64_t g = 0; g < p.n_group; ++g) {
        const float* c = choice.data() + g * group_size;
        if (p.group_top2_sum) {
          float first = -INFINITY, second = -INFINITY;
          for (int64_t i = 0; i < group_size; ++i) {
            if (c[i] > first) { second = first; first = c[i]; }
            else if (c[i] > second) second = c[i];
          }
          group_score[g] = first + second;
        } else {
          group_score[g] = *std::max_element(c, c + group_size);
        }
      }
      std::iota(groups.begin(), groups.end(), 0);
      std::partial_sort(groups.begin(), groups.begin() + p.topk_group, groups.end(), better(group_score));
      std::vector<bool> keep(p.n_group, false);
      for (int64_t g = 0; g < p.topk_group; ++g) keep[groups[g]] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!keep[e / group_size]) choice[e] = -INFINITY;
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(), better(choice));
    std::sort(order.begin(), order.begin() + K);
    int32_t* ids = expert_ids + t * K;
    float* w = weights + t * K;
    float sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      ids[k] = order[k];
      w[k] = scores[order[k]];
      sum += w[k];
    }
    const float scale = p.norm_topk_prob ? p.routed_scaling_factor / sum : p.routed_scaling_factor;
    for (int64_t k = 0; k < K; ++k) w[k] *= scale;
  }
}

}  // namespace daedalus
