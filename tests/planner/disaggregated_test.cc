// plan --phase pd: each side is the deployment MakePlan plans for its nodes alone, the pair
// serves the least of their request rates and of what the prefill NICs carry, and the KV pages
// are the prompt's latent rows (kv_lora_rank + qk_rope_head_dim per layer, in the cache dtype).
#include "planner/disaggregated.h"

#include <gtest/gtest.h>

#include "tests/planner/presets.h"

namespace daedalus {
namespace {

struct Pd {
  ModelConfig model = PresetModel("deepseek-v3");
  ClusterConfig cluster = PresetCluster("sglang-h100-pd");
  Workload workload = PresetWorkload(model, cluster);
};

// The side as a user would plan it alone: `plan --phase prefill --nodes 3 ...`.
Plan Alone(const Pd& pd, Phase phase) {
  Workload w;
  w.phase = phase;
  w.weight_dtype = DType::kF8E4M3;
  w.kv_dtype = pd.workload.kv_dtype;
  w.redundant_experts = 32;
  w.micro_batches = 2;
  w.nodes = phase == Phase::kPrefill ? 3 : 9;
  w.batch_per_device = phase == Phase::kPrefill ? 8 : 256;
  w.prompt_len = 2000;
  w.avg_context = 2000;
  auto plan = MakePlan(pd.model, pd.cluster, w, Efficiency{}, {});
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *plan : Plan{};
}

TEST(Disaggregated, EachSideIsItsOwnDeploymentAndThePairServesTheLeast) {
  const Pd pd;
  ASSERT_EQ(pd.workload.phase, Phase::kPd);
  auto plan = MakePdPlan(pd.model, pd.cluster, pd.workload, Efficiency{}, {});
  ASSERT_TRUE(plan.ok()) << plan.status();
  const Plan prefill = Alone(pd, Phase::kPrefill), decode = Alone(pd, Phase::kDecode);
  EXPECT_EQ(plan->prefill.devices, 24);
  EXPECT_EQ(plan->decode.devices, 72);
  EXPECT_DOUBLE_EQ(plan->prefill.step_s, prefill.step_s);
  EXPECT_DOUBLE_EQ(plan->decode.step_s, decode.step_s);
  const double prefill_rps = prefill.input_tokens_per_s_per_device * 24 / 2000;
  const double decode_rps = decode.output_tokens_per_s_per_device * 72 / 553;
  EXPECT_NEAR(plan->prefill_requests_per_s, prefill_rps, 1e-9 * prefill_rps);
  EXPECT_NEAR(plan->decode_requests_per_s, decode_rps, 1e-9 * decode_rps);
  // DeepSeek-V3's latent row: (512 + 64) bf16 values in each of 61 layers.
  EXPECT_DOUBLE_EQ(plan->kv_bytes_per_request, 2000.0 * (512 + 64) * 2 * 61);
  EXPECT_DOUBLE_EQ(plan->kv_transfer_s, plan->kv_bytes_per_request / pd.cluster.hardware.nic_bandwidth +
                                            pd.cluster.hardware.nic_latency_s);
  const double least = std::min({prefill_rps, decode_rps, plan->nic_requests_per_s});
  EXPECT_NEAR(plan->requests_per_s, least, 1e-9 * least);
  EXPECT_NEAR(plan->output_tokens_per_s(), least * 553, 1e-6 * least * 553);
  // A prefill NIC's time at that rate: the all-to-all of the side's steps and the KV pages.
  const double a2a = (prefill.dispatch_nic_bytes + prefill.combine_nic_bytes) / prefill.step_s;  // per device, full rate
  EXPECT_NEAR(plan->prefill_nic_all_to_all, a2a * (least / prefill_rps) / pd.cluster.hardware.nic_bandwidth, 1e-9);
  EXPECT_NEAR(plan->prefill_nic_kv, least * plan->kv_bytes_per_request / 24 / pd.cluster.hardware.nic_bandwidth, 1e-9);
  EXPECT_DOUBLE_EQ(plan->ttft_s(), prefill.ttft_s);
  EXPECT_DOUBLE_EQ(plan->itl_s(), decode.itl_s);
}

TEST(Disaggregated, TheBoundMovesWithTheWork) {
  const Pd pd;
  Workload w = pd.workload;
  w.output_len = 20000;  // long answers: the decode side bounds
  auto decode_bound = MakePdPlan(pd.model, pd.cluster, w, Efficiency{}, {});
  ASSERT_TRUE(decode_bound.ok()) << decode_bound.status();
  EXPECT_EQ(decode_bound->bottleneck, "decode");
  EXPECT_DOUBLE_EQ(decode_bound->decode_busy(), 1.0);
  EXPECT_LT(decode_bound->prefill_busy(), 1.0);
  EXPECT_GT(decode_bound->balanced_prefill_nodes, 0);
  EXPECT_LT(decode_bound->balanced_prefill_nodes, 3);  // fewer prefill nodes would keep up
  // Prompts almost all cached (their pages still move, their all-to-all does not), one token
  // each, and a NIC a thousandth as fast: the KV pages bound; the FP8 cache carries 656 / 1152
  // of the bytes.
  ClusterConfig slow = pd.cluster;
  slow.hardware.nic_bandwidth /= 1000;
  w = pd.workload;
  w.cache_hit_rate = 0.99;
  w.output_len = 1;
  auto nic_bound = MakePdPlan(pd.model, slow, w, Efficiency{}, {});
  ASSERT_TRUE(nic_bound.ok()) << nic_bound.status();
  EXPECT_EQ(nic_bound->bottleneck, "kv transfer");
  EXPECT_NEAR(nic_bound->prefill_nic_all_to_all + nic_bound->prefill_nic_kv, 1.0, 1e-9);
  w.kv_dtype = DType::kF8E4M3;
  auto fp8 = MakePdPlan(pd.model, slow, w, Efficiency{}, {});
  ASSERT_TRUE(fp8.ok()) << fp8.status();
  EXPECT_DOUBLE_EQ(fp8->kv_bytes_per_request, 2000.0 * 656 * 61);
  EXPECT_GT(fp8->nic_requests_per_s, nic_bound->nic_requests_per_s);
}

TEST(Disaggregated, BadSettingsAreRefusedWithTheReason) {
  const Pd pd;
  Workload w = pd.workload;
  w.decode_nodes = 10;  // 3 + 10 > 12
  auto too_many = MakePdPlan(pd.model, pd.cluster, w, Efficiency{}, {});
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(too_many.status().message().find("has 12"), std::string::npos) << too_many.status();
  w = pd.workload;
  w.output_len = 0;
  EXPECT_NE(MakePdPlan(pd.model, pd.cluster, w, Efficiency{}, {}).status().message().find("--output-len"), std::string::npos);
  w = pd.workload;
  w.prefill_nodes = 0;
  EXPECT_NE(MakePdPlan(pd.model, pd.cluster, w, Efficiency{}, {}).status().message().find("--prefill-nodes"), std::string::npos);
  // MakePlan plans one side; a pd workload names the function that plans both.
  auto one = MakePlan(pd.model, pd.cluster, pd.workload, Efficiency{}, {});
  ASSERT_FALSE(one.ok());
  EXPECT_NE(one.status().message().find("MakePdPlan"), std::string::npos);
  // A side that does not fit says which side.
  w = pd.workload;
  w.batch_per_device = 100000;
  auto huge = MakePdPlan(pd.model, pd.cluster, w, Efficiency{}, {});
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().message().rfind("decode side: ", 0), 0u) << huge.status();
}

}  // namespace
}  // namespace daedalus
