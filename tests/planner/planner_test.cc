// The planner's behaviour: monotonic where physics says so, and clear errors on bad settings.
#include "planner/plan.h"

#include <gtest/gtest.h>

#include "tests/planner/presets.h"

namespace daedalus {
namespace {

absl::StatusOr<Plan> Decode(const ModelConfig& model, const ClusterConfig& cluster, int64_t batch, int64_t context) {
  Workload w;
  w.phase = Phase::kDecode;
  w.batch_per_device = batch;
  w.avg_context = context;
  w.weight_dtype = model.fp8 ? DType::kF8E4M3 : DType::kBF16;
  return MakePlan(model, cluster, w, Efficiency{}, {});
}

TEST(Planner, MoreNodesNeverLowerCapacity) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("h800-18node");
  double last_cluster_tokens = 0;
  int fitted = 0;
  for (int64_t nodes = 1; nodes <= cluster.nodes; ++nodes) {
    Workload w;
    w.nodes = nodes;  // EP = every device of those nodes
    w.batch_per_device = 16;
    w.avg_context = 4096;
    auto plan = MakePlan(v3, cluster, w, Efficiency{}, {});
    if (!plan.ok()) {
      EXPECT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted) << plan.status();
      EXPECT_EQ(fitted, 0) << "a plan that fits on fewer nodes must fit on " << nodes << ": " << plan.status();
      continue;
    }
    ++fitted;
    const double cluster_tokens = static_cast<double>(plan->memory.kv_capacity_tokens) * plan->devices;
    EXPECT_GT(cluster_tokens, last_cluster_tokens) << nodes << " nodes";
    last_cluster_tokens = cluster_tokens;
  }
  EXPECT_GE(fitted, 16);  // V3 in FP8 needs two H800 nodes at least
}

TEST(Planner, MoreDeploymentUnitsScaleLinearly) {
  // Fixed EP: more nodes are more independent units; per-node figures stay put.
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("h800-18node");
  Workload w;
  w.ep = 16;
  w.batch_per_device = 16;
  w.avg_context = 2048;
  w.nodes = 2;
  auto one = MakePlan(v3, cluster, w, Efficiency{}, {});
  w.nodes = 8;
  auto four = MakePlan(v3, cluster, w, Efficiency{}, {});
  ASSERT_TRUE(one.ok() && four.ok());
  EXPECT_EQ(four->units, 4 * one->units);
  EXPECT_DOUBLE_EQ(four->output_tokens_per_s_per_node(), one->output_tokens_per_s_per_node());
  EXPECT_EQ(four->memory.kv_capacity_tokens, one->memory.kv_capacity_tokens);
}

TEST(Planner, DoublingMemoryBandwidthNeverSlowsAMemoryBoundStep) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig base = PresetCluster("deepseek-decode-h800");
  ClusterConfig faster = base;
  faster.hardware.memory_bandwidth *= 2;
  for (int64_t batch : {1, 8, 32, 128}) {
    auto slow = Decode(v3, base, batch, 4096);
    auto fast = Decode(v3, faster, batch, 4096);
    ASSERT_TRUE(slow.ok() && fast.ok()) << slow.status() << fast.status();
    EXPECT_LE(fast->step_s, slow->step_s) << "batch " << batch;
    EXPECT_LE(fast->compute_s, slow->compute_s) << "batch " << batch;
  }
  // Batch 1 reads every weight for one token: memory-bound, so faster memory must show.
  auto slow = Decode(v3, base, 1, 4096);
  auto fast = Decode(v3, faster, 1, 4096);
  ASSERT_TRUE(slow.ok() && fast.ok());
  EXPECT_LT(fast->compute_s, 0.7 * slow->compute_s);
}

TEST(Planner, LongerContextAndBiggerBatchCostMoreTimePerStep) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("deepseek-decode-h800");
  auto short_ctx = Decode(v3, cluster, 64, 1024);
  auto long_ctx = Decode(v3, cluster, 64, 8192);
  auto big = Decode(v3, cluster, 128, 1024);
  ASSERT_TRUE(short_ctx.ok() && long_ctx.ok() && big.ok());
  EXPECT_GT(long_ctx->step_s, short_ctx->step_s);
  EXPECT_GT(big->step_s, short_ctx->step_s);
  // ...yet a bigger batch is more tokens per second: weights are read once for all of it.
  EXPECT_GT(big->output_tokens_per_s_per_device, short_ctx->output_tokens_per_s_per_device);
}

TEST(Planner, OverlapHidesCommunication) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("deepseek-prefill-h800");
  Workload w = PresetWorkload(v3, cluster);
  auto two = MakePlan(v3, cluster, w, Efficiency{}, {});
  w.micro_batches = 1;
  auto one = MakePlan(v3, cluster, w, Efficiency{}, {});
  ASSERT_TRUE(one.ok() && two.ok());
  EXPECT_EQ(one->hidden_s, 0);
  EXPECT_GT(two->hidden_s, 0);
  EXPECT_LT(two->step_s, one->step_s);
  EXPECT_NEAR(one->step_s, one->compute_s + one->communication_s, 1e-9);
}

TEST(Planner, CacheHitsSkipPrefillCompute) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("deepseek-prefill-h800");
  Workload w = PresetWorkload(v3, cluster);
  auto cold = MakePlan(v3, cluster, w, Efficiency{}, {});
  w.cache_hit_rate = 0.5;
  auto warm = MakePlan(v3, cluster, w, Efficiency{}, {});
  ASSERT_TRUE(cold.ok() && warm.ok());
  EXPECT_LT(warm->flops_per_step, cold->flops_per_step);
  EXPECT_GT(warm->input_tokens_per_s_per_node(), 1.3 * cold->input_tokens_per_s_per_node());
}

TEST(Planner, MtpTradesAnExtraLayerAndADoubledBatchForAcceptedDrafts) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("deepseek-decode-h800");
  Workload w = PresetWorkload(v3, cluster);
  auto plan_with = [&](double acceptance, int64_t batch) {
    Workload x = w;
    x.mtp_acceptance = acceptance;
    x.batch_per_device = batch;
    auto p = MakePlan(v3, cluster, x, Efficiency{}, {});
    EXPECT_TRUE(p.ok()) << p.status();
    return *p;
  };
  for (int64_t batch : {4, 128}) {
    const Plan off = plan_with(-1, batch), none = plan_with(0, batch), half = plan_with(0.5, batch), all = plan_with(1, batch);
    // The step is the same whatever the acceptance: two tokens per sequence plus the module.
    EXPECT_EQ(none.step_s, all.step_s);
    EXPECT_GT(none.step_s, off.step_s);
    EXPECT_NEAR(all.output_tokens_per_s_per_device / none.output_tokens_per_s_per_device, 2.0, 1e-9);
    EXPECT_NEAR(half.output_tokens_per_s_per_device / none.output_tokens_per_s_per_device, 1.5, 1e-9);
    EXPECT_NEAR(half.itl_s, half.step_s / 1.5, 1e-12);
    EXPECT_LT(none.output_tokens_per_s_per_device, off.output_tokens_per_s_per_device);  // cost, no gain
    EXPECT_EQ(none.tokens_per_micro_batch, 2 * off.tokens_per_micro_batch);
    // The draft and the sampled token read their sequence's cache once, together; the module's
    // layer reads its own.
    auto bytes = [](const Plan& p, const std::string& name) {
      for (const StepPart& s : p.compute)
        if (s.name == name) return s.bytes;
      return -1.0;
    };
    EXPECT_NEAR(bytes(none, "core attention") / bytes(off, "core attention"), 62.0 / 61, 1e-12);
    if (batch == 4) {
      // Memory-bound: the second token and the module cost little, so accepted drafts pay.
      EXPECT_GT(plan_with(0.85, batch).output_tokens_per_s_per_device, 1.4 * off.output_tokens_per_s_per_device);
    }
  }
  w.phase = Phase::kPrefill;
  w.mtp_acceptance = 0.8;
  auto prefill = MakePlan(v3, cluster, w, Efficiency{}, {});
  EXPECT_FALSE(prefill.ok());
  // A model without an MTP module gains nothing from it (V2 had been planned 74% faster).
  ModelConfig no_mtp = v3;
  no_mtp.num_nextn_predict_layers = 0;
  w.phase = Phase::kDecode;
  auto without = MakePlan(no_mtp, cluster, w, Efficiency{}, {});
  ASSERT_FALSE(without.ok());
  EXPECT_NE(without.status().message().find("num_nextn_predict_layers"), std::string::npos) << without.status();
}

void ExpectInvalid(const absl::StatusOr<Plan>& plan, const std::string& part) {
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument) << plan.status();
  EXPECT_NE(plan.status().message().find(part), std::string::npos)
      << "message \"" << plan.status().message() << "\" lacks \"" << part << "\"";
}

TEST(Planner, InvalidSettingsAreClearErrors) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("h800-18node");
  Workload w;
  w.ep = 32;  // 144 devices
  ExpectInvalid(MakePlan(v3, cluster, w, Efficiency{}, {}), "EP 32 does not divide the 144 devices");
  w.ep = 12;
  w.nodes = 3;  // 24 devices: 12 divides them but splits a node
  ExpectInvalid(MakePlan(v3, cluster, w, Efficiency{}, {}), "multiple or a divisor of the 8 devices per node");
  w = Workload{};
  w.nodes = 19;
  ExpectInvalid(MakePlan(v3, cluster, w, Efficiency{}, {}), "has 18");
  w = Workload{};
  w.micro_batches = 3;
  ExpectInvalid(MakePlan(v3, cluster, w, Efficiency{}, {}), "micro-batches must be 1 or 2");
  w = Workload{};
  w.avg_context = 200000;
  ExpectInvalid(MakePlan(v3, cluster, w, Efficiency{}, {}), "max_position_embeddings");
  w = Workload{};
  w.batch_per_device = 0;
  ExpectInvalid(MakePlan(v3, cluster, w, Efficiency{}, {}), "batch per device must be >= 1");
  const ModelConfig lite = PresetModel("deepseek-v2-lite");
  w = Workload{};
  w.weight_dtype = DType::kBF16;
  ExpectInvalid(MakePlan(lite, cluster, w, Efficiency{}, {}), "exceeds the 64 routed experts");
  Workload bad_dtype;
  bad_dtype.kv_dtype = DType::kF32;
  ExpectInvalid(MakePlan(v3, cluster, bad_dtype, Efficiency{}, {}), "KV dtype");
  EXPECT_FALSE(ParsePhase("generate").ok());
  EXPECT_FALSE(ParsePlanDType("int4").ok());
}

TEST(Planner, SmallModelsOnCpuAndSingleNodeClusters) {
  // Presets of every kind plan: V2-Lite on the CPU cluster, V2 on one H200 node.
  const ModelConfig lite = PresetModel("deepseek-v2-lite");
  Workload w;
  w.weight_dtype = DType::kBF16;
  w.batch_per_device = 8;
  w.avg_context = 2048;
  auto cpu = MakePlan(lite, PresetCluster("cpu-4node"), w, Efficiency{}, {});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_GT(cpu->output_tokens_per_s_per_node(), 0);
  const ModelConfig v2 = PresetModel("deepseek-v2");
  auto h200 = MakePlan(v2, PresetCluster("h200-1node"), w, Efficiency{}, {});
  ASSERT_TRUE(h200.ok()) << h200.status();
  EXPECT_EQ(h200->routing.remote_node_pairs, 0);  // one node: nothing crosses a NIC
  EXPECT_EQ(h200->dispatch_nic_bytes, 0);
  EXPECT_GT(h200->dispatch_intra_bytes, 0);
  EXPECT_EQ(h200->kv_bytes_per_token, 69120);
}

}  // namespace
}  // namespace daedalus
