// Memory per device by part, KV capacity, and the errors of plans that do not fit.
#include "planner/memory.h"

#include <gtest/gtest.h>

#include "planner/model_shape.h"
#include "tests/planner/presets.h"

namespace daedalus {
namespace {

constexpr double kGiB = 1024.0 * 1024 * 1024;

TEST(Memory, DeepSeekDecodeUnitBreakdown) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("deepseek-decode-h800");
  auto plan = MakePlan(v3, cluster, PresetWorkload(v3, cluster), Efficiency{}, {});
  ASSERT_TRUE(plan.ok()) << plan.status();
  const MemoryBreakdown& m = plan->memory;
  const double fp8 = 1.0 + 4.0 / 16384;
  // Independent arithmetic from the published shapes: 61 layers of MLA (187.1M each), 3 dense
  // MLPs (3 x 7168 x 18432), BF16 embeddings, lm_head and 58 routers (256 x 7168), norms.
  const double attention_and_dense = 61 * 187105280.0 * fp8 + 3 * 3 * 7168.0 * 18432 * fp8 +
                                     2 * 129280.0 * 7168 * 2 + 58 * 256.0 * 7168 * 2 +
                                     (61 * (2 * 7168.0 + 512 + 1536) + 7168) * 2;
  EXPECT_NEAR(m.attention_and_dense, attention_and_dense, 1.0);
  const double expert = 58 * 3 * 7168.0 * 2048 * fp8;  // one expert in every MoE layer
  EXPECT_NEAR(m.shared_experts, expert, 1.0);
  // 256 + 32 slots over 144 GPUs: 2 per GPU ("each GPU manages 2 routed experts"), of which
  // 256/144 are the GPU's share of the experts.
  EXPECT_NEAR(m.routed_experts_own + m.routed_experts_redundant, 2 * expert, 1.0);
  EXPECT_NEAR(m.routed_experts_own, 256.0 / 144 * expert, 1.0);
  EXPECT_NEAR(m.reserved, 0.08 * 80 * kGiB, 1.0);
  // The parts and the free KV pool fill the device; the plan's 128 x 4,989 tokens fit.
  EXPECT_NEAR(m.reserved + m.weights() + m.activations + m.communication_buffers + m.kv_cache, m.total, 1.0);
  EXPECT_DOUBLE_EQ(m.kv_needed, 128.0 * 4989 * 70272);
  EXPECT_EQ(m.kv_capacity_tokens, static_cast<int64_t>(m.kv_cache / 70272));
  EXPECT_EQ(m.kv_capacity_sequences, m.kv_capacity_tokens / 4989);
  EXPECT_GE(m.kv_capacity_sequences, 128);
}

TEST(Memory, DecodeWithMtpHoldsTheModuleAndItsCache) {
  // The MTP module is one more MoE layer on every device, its routed experts spread as the
  // model's are, with one more layer of latent cache per token.
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("deepseek-decode-h800");
  Workload w = PresetWorkload(v3, cluster);
  w.batch_per_device = 64;
  auto off = MakePlan(v3, cluster, w, Efficiency{}, {});
  w.mtp_acceptance = 0.8;
  auto on = MakePlan(v3, cluster, w, Efficiency{}, {});
  ASSERT_TRUE(off.ok() && on.ok()) << off.status() << on.status();
  const MemoryBreakdown &a = off->memory, &b = on->memory;
  const double fp8 = 1.0 + 4.0 / 16384, expert = 3 * 7168.0 * 2048 * fp8;
  // MLA and eh_proj in FP8, the router and the norms in BF16.
  EXPECT_NEAR(b.attention_and_dense - a.attention_and_dense,
              (187105280.0 + 2 * 7168.0 * 7168) * fp8 + 256 * 7168.0 * 2 + (3 * 7168 + 2 * 7168 + 512 + 1536) * 2, 1.0);
  EXPECT_NEAR(b.shared_experts - a.shared_experts, expert, 1.0);
  EXPECT_NEAR(b.routed_experts_own - a.routed_experts_own, 256.0 / 144 * expert, 1.0);
  constexpr double kPerToken = 70272 + 1152;  // 62 layers of 576 BF16 elements
  EXPECT_EQ(b.kv_bytes_per_token, kPerToken);
  EXPECT_EQ(a.kv_bytes_per_token, 70272);
  EXPECT_DOUBLE_EQ(b.kv_needed, 64.0 * 4989 * kPerToken);
  EXPECT_EQ(b.kv_capacity_tokens, static_cast<int64_t>(b.kv_cache / kPerToken));
  EXPECT_LT(b.kv_capacity_tokens, a.kv_capacity_tokens);
}

TEST(Memory, PrefillUnitHoldsNineRoutedExpertsPerGpu) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("deepseek-prefill-h800");
  auto plan = MakePlan(v3, cluster, PresetWorkload(v3, cluster), Efficiency{}, {});
  ASSERT_TRUE(plan.ok()) << plan.status();
  const double expert = 58 * 3 * 7168.0 * 2048 * (1.0 + 4.0 / 16384);
  // "each GPU handles 9 routed experts and 1 shared expert"
  EXPECT_NEAR(plan->memory.routed_experts_own + plan->memory.routed_experts_redundant, 9 * expert, 1.0);
  EXPECT_EQ(plan->routing.max_experts_per_device, 9);
}

TEST(Memory, WholeModelOnOneH800NodeDoesNotFit) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  ClusterConfig cluster = PresetCluster("h800-18node");
  Workload w = PresetWorkload(v3, cluster);
  w.nodes = 1;
  auto plan = MakePlan(v3, cluster, w, Efficiency{}, {});
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(plan.status().message().find("does not fit"), std::string::npos) << plan.status();
  EXPECT_NE(plan.status().message().find("32 routed experts per layer per device at EP 8"), std::string::npos)
      << plan.status();
}

TEST(Memory, TooManySequencesNamesTheLimit) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("deepseek-decode-h800");
  Workload w = PresetWorkload(v3, cluster);
  w.batch_per_device = 1024;
  auto plan = MakePlan(v3, cluster, w, Efficiency{}, {});
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(plan.status().message().find("1024 sequences x 4989 tokens"), std::string::npos) << plan.status();
  EXPECT_NE(plan.status().message().find("sequences fit per device"), std::string::npos) << plan.status();
}

TEST(Memory, Fp8KvCacheHoldsMoreTokens) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("deepseek-decode-h800");
  Workload w = PresetWorkload(v3, cluster);
  auto bf16 = MakePlan(v3, cluster, w, Efficiency{}, {});
  w.kv_dtype = DType::kF8E4M3;
  auto fp8 = MakePlan(v3, cluster, w, Efficiency{}, {});
  ASSERT_TRUE(bf16.ok() && fp8.ok());
  EXPECT_NEAR(static_cast<double>(fp8->memory.kv_capacity_tokens) / bf16->memory.kv_capacity_tokens, 1152.0 / 656,
              0.01);
}

}  // namespace
}  // namespace daedalus
