// The gate against hand-worked routing cases (shared/MODEL-SEMANTICS.md, "MoE routing").
#include "routing/gate.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace daedalus {
namespace {

float Logit(float p) { return std::log(p / (1 - p)); }

std::vector<float> SigmoidLogits(const std::vector<float>& scores) {
  std::vector<float> l;
  for (float s : scores) l.push_back(Logit(s));
  return l;
}

TEST(Gate, V3KeepsTopGroupsBySumOfTopTwo) {
  GateParams p;
  p.n_routed_experts = 8;
  p.num_experts_per_tok = 2;
  p.n_group = 4;
  p.topk_group = 2;
  p.routed_scaling_factor = 2.5f;
  // Expert 0 has the best score but its group {0, 1} sums to 1.0 < {2, 3} 1.2 and {4, 5} 1.1.
  const auto logits = SigmoidLogits({0.95f, 0.05f, 0.6f, 0.58f, 0.57f, 0.53f, 0.1f, 0.1f});
  int32_t ids[2];
  float w[2];
  Route(p, logits.data(), nullptr, 1, ids, w);
  EXPECT_EQ(ids[0], 2);
  EXPECT_EQ(ids[1], 3);
  EXPECT_NEAR(w[0], 2.5 * 0.6 / (0.6 + 0.58), 1e-5);
  EXPECT_NEAR(w[1], 2.5 * 0.58 / (0.6 + 0.58), 1e-5);
  // With a max-based group score (V2), group {0, 1} (0.95) wins instead.
  p.group_top2_sum = false;
  Route(p, logits.data(), nullptr, 1, ids, w);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 2);
}

TEST(Gate, CorrectionBiasChoosesButDoesNotWeigh) {
  GateParams p;
  p.n_routed_experts = 4;
  p.num_experts_per_tok = 2;
  const auto logits = SigmoidLogits({0.6f, 0.5f, 0.55f, 0.2f});
  const std::vector<float> bias = {0.0f, 0.2f, -0.1f, 0.0f};  // biased: 0.6, 0.7, 0.45, 0.2
  int32_t ids[2];
  float w[2];
  Route(p, logits.data(), bias.data(), 1, ids, w);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 1);
  EXPECT_NEAR(w[0], 0.6 / 1.1, 1e-5);  // unbiased scores, renormalised
  EXPECT_NEAR(w[1], 0.5 / 1.1, 1e-5);
}

TEST(Gate, V2SoftmaxIsNotRenormalisedAndIsScaled) {
  GateParams p;
  p.n_routed_experts = 4;
  p.num_experts_per_tok = 2;
  p.sigmoid = false;
  p.norm_topk_prob = false;
  p.routed_scaling_factor = 16.0f;
  const std::vector<float> logits = {1.0f, 3.0f, 0.0f, 2.0f};
  double z = 0;
  for (float l : logits) z += std::exp(l);
  int32_t ids[2];
  float w[2];
  Route(p, logits.data(), nullptr, 1, ids, w);
  EXPECT_EQ(ids[0], 1);  // ids ascending
  EXPECT_EQ(ids[1], 3);
  EXPECT_NEAR(w[0], 16 * std::exp(3.0) / z, 1e-4);
  EXPECT_NEAR(w[1], 16 * std::exp(2.0) / z, 1e-4);
}

TEST(Gate, TiesGoToTheLowerExpertAndTokensAreIndependent) {
  GateParams p;
  p.n_routed_experts = 4;
  p.num_experts_per_tok = 1;
  const std::vector<float> logits = {0.5f, 0.5f, 0.5f, 0.5f, /* token 2 */ 0.0f, 0.0f, 1.0f, 1.0f};
  int32_t ids[2];
  float w[2];
  Route(p, logits.data(), nullptr, 2, ids, w);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 2);
  EXPECT_NEAR(w[0], 1.0, 1e-6);
}

}  // namespace
}  // namespace daedalus
