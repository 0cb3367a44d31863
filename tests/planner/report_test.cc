// Sweeps, output formats and the SVG frontier.
#include "planner/report.h"

#include <gtest/gtest.h>

#include "planner/svg_plot.h"
#include "planner/sweep.h"
#include "tests/planner/presets.h"

namespace daedalus {
namespace {

TEST(Sweep, ParsesAndExpandsInOrder) {
  auto ep = ParseSweepAxis("ep=8,16");
  auto batch = ParseSweepAxis("batch-per-gpu=32,64,128");
  ASSERT_TRUE(ep.ok() && batch.ok());
  const auto combos = ExpandSweep({*ep, *batch});
  ASSERT_EQ(combos.size(), 6u);
  EXPECT_EQ(combos[0], (std::vector<Setting>{{"ep", "8"}, {"batch-per-gpu", "32"}}));
  EXPECT_EQ(combos[5], (std::vector<Setting>{{"ep", "16"}, {"batch-per-gpu", "128"}}));
  EXPECT_EQ(ExpandSweep({}).size(), 1u);
  EXPECT_FALSE(ParseSweepAxis("ep").ok());
  EXPECT_FALSE(ParseSweepAxis("ep=").ok());
  EXPECT_FALSE(ParseSweepAxis("ep=8,,16").ok());
  auto unknown = ParseSweepAxis("tp=2,4");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unknown setting \"tp\""), std::string::npos);
}

TEST(Sweep, SettingsApplyOrExplain) {
  Workload w;
  ASSERT_TRUE(ApplySetting({"batch-per-gpu", "96"}, w).ok());
  EXPECT_EQ(w.batch_per_device, 96);
  ASSERT_TRUE(ApplySetting({"phase", "prefill"}, w).ok());
  EXPECT_EQ(w.phase, Phase::kPrefill);
  ASSERT_TRUE(ApplySetting({"kv-dtype", "fp8"}, w).ok());
  EXPECT_EQ(w.kv_dtype, DType::kF8E4M3);
  absl::Status bad = ApplySetting({"ep", "eight"}, w);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("ep=eight: expected an integer >= 1"), std::string::npos) << bad;
  EXPECT_FALSE(ApplySetting({"cache-hit-rate", "1.5"}, w).ok());
  EXPECT_FALSE(ApplySetting({"micro-batches", "3"}, w).ok());
}

TEST(Report, JsonHasTheContractKeys) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("deepseek-decode-h800");
  auto plan = MakePlan(v3, cluster, PresetWorkload(v3, cluster), Efficiency{}, {});
  ASSERT_TRUE(plan.ok());
  const auto j = PlanJson("deepseek-v3", *plan, cluster.published);
  for (const char* key : {"kv_bytes_per_token", "kv_capacity_tokens_per_device", "memory_per_device_bytes",
                          "input_tokens_per_s_per_node", "output_tokens_per_s_per_node", "ttft_ms", "itl_ms",
                          "imbalance"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["kv_bytes_per_token"], 70272);
  EXPECT_TRUE(j["input_tokens_per_s_per_node"].is_null());  // decode plan
  EXPECT_GT(j["output_tokens_per_s_per_node"].get<double>(), 0);
  EXPECT_LE(j["memory_per_device_bytes"].get<double>(), j["device_memory_bytes"].get<double>());
  EXPECT_NEAR(j["published"]["planned_over_published"].get<double>(),
              plan->output_tokens_per_s_per_node() / 14800, 1e-9);
  const std::string report = PlanReport("deepseek-v3", *plan, Efficiency{}, cluster.published);
  for (const char* part : {"memory per device", "routed experts (redundant)", "core attention", "dispatch + combine",
                           "load imbalance", "output tokens/s", "efficiency factors"}) {
    EXPECT_NE(report.find(part), std::string::npos) << part;
  }
}

TEST(Report, CsvRowsMatchTheHeaderAndQuote) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ClusterConfig cluster = PresetCluster("deepseek-decode-h800");
  std::vector<Setting> settings = {{"ep", "144"}};
  PlanResult good{settings, MakePlan(v3, cluster, PresetWorkload(v3, cluster), Efficiency{}, {})};
  PlanResult bad{settings, absl::InvalidArgumentError("EP 7, \"odd\"")};
  auto columns = [](const std::string& line) {
    int n = 1;
    bool quoted = false;
    for (char c : line) {
      if (c == '"') quoted = !quoted;
      if (c == ',' && !quoted) ++n;
    }
    return n;
  };
  const std::string header = CsvHeader(settings);
  EXPECT_EQ(header.rfind("sweep:ep,model,", 0), 0u) << header;
  EXPECT_EQ(columns(CsvRow("deepseek-v3", good)), columns(header));
  const std::string row = CsvRow("deepseek-v3", bad);
  EXPECT_EQ(columns(row), columns(header));
  EXPECT_NE(row.find("\"EP 7, \"\"odd\"\"\""), std::string::npos) << row;
}

TEST(Plot, FrontierAndSvg) {
  const std::vector<PlotPoint> points = {{10, 100, "a"}, {20, 300, "b"}, {15, 90, "c"}, {30, 250, "d"}, {5, 50, "e<"}};
  EXPECT_EQ(Frontier(points), (std::vector<size_t>{4, 0, 1}));
  const std::string svg = FrontierSvg(points, "t & u", "latency (ms)", "tokens/s");
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("t &amp; u"), std::string::npos);
  EXPECT_NE(svg.find("e&lt;"), std::string::npos);
  EXPECT_EQ(svg.find("e<"), std::string::npos);
}

}  // namespace
}  // namespace daedalus
