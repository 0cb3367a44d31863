// Cluster and hardware YAML: every preset under cluster-configs/ loads with the datasheet
// numbers it states, and bad files fail with the file and the key named.
#include "core/cluster_config.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace daedalus {
namespace {

namespace fs = std::filesystem;
const std::string kConfigs = std::string(DAEDALUS_SOURCE_DIR) + "/cluster-configs";

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / ("cluster_config_test_" + std::to_string(::getpid()))) {
    fs::create_directories(path_ / "clusters");
    fs::create_directories(path_ / "hardware");
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string Write(const std::string& name, const std::string& text) {
    std::ofstream(path_ / name) << text;
    return (path_ / name).string();
  }

 private:
  fs::path path_;
};

const char* kGoodHardware =
    "name: test gpu\nmemory_gib: 80\nmemory_bandwidth_gb_s: 3350\nbf16_tflops: 989\nfp8_tflops: 1979\n"
    "intra_node_gb_s: 200\nnic_gb_s: 50\nnic_latency_us: 2\n";

TEST(ClusterConfig, EveryPresetLoads) {
  int clusters = 0;
  for (const auto& entry : fs::directory_iterator(kConfigs + "/clusters")) {
    auto c = LoadClusterConfig(entry.path().string());
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_GT(c->devices(), 0);
    EXPECT_GT(c->hardware.memory_bytes, 0);
    ++clusters;
  }
  EXPECT_GE(clusters, 6);
  for (const auto& entry : fs::directory_iterator(kConfigs + "/hardware")) {
    auto h = LoadHardwareSpec(entry.path().string());
    ASSERT_TRUE(h.ok()) << h.status();
  }
}

TEST(ClusterConfig, DeepSeekDecodeUnit) {
  auto c = LoadClusterConfig(kConfigs + "/clusters/deepseek-decode-h800.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->nodes, 18);
  EXPECT_EQ(c->devices(), 144);
  EXPECT_EQ(c->hardware.name, "H800 SXM5");
  EXPECT_DOUBLE_EQ(c->hardware.memory_bytes, 80.0 * (1 << 30));
  EXPECT_DOUBLE_EQ(c->hardware.memory_bandwidth, 3.35e12);
  EXPECT_DOUBLE_EQ(c->hardware.bf16_flops, 989e12);
  EXPECT_DOUBLE_EQ(c->hardware.fp8_flops, 1979e12);
  EXPECT_DOUBLE_EQ(c->hardware.intra_node_bandwidth, 200e9);
  EXPECT_DOUBLE_EQ(c->hardware.nic_bandwidth, 50e9);
  EXPECT_EQ(c->deployment.ep, 144);
  EXPECT_EQ(c->deployment.redundant_experts, 32);
  EXPECT_EQ(c->deployment.avg_context, 4989);
  ASSERT_TRUE(c->published.has_value());
  EXPECT_EQ(c->published->metric, "output_tokens_per_s_per_node");
  EXPECT_EQ(c->published->value, 14800);
}

TEST(ClusterConfig, CpuHasNoFp8UnitsAndDecimalMemoryWorks) {
  auto cpu = LoadHardwareSpec(kConfigs + "/hardware/cpu-node.yaml");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ(cpu->kind, "cpu");
  EXPECT_EQ(cpu->fp8_flops, cpu->bf16_flops);
  auto b200 = LoadHardwareSpec(kConfigs + "/hardware/b200.yaml");  // memory_gb: decimal
  ASSERT_TRUE(b200.ok()) << b200.status();
  EXPECT_DOUBLE_EQ(b200->memory_bytes, 180e9);
  auto h200 = LoadHardwareSpec(kConfigs + "/hardware/h200.yaml");  // memory_gib: binary
  ASSERT_TRUE(h200.ok()) << h200.status();
  EXPECT_DOUBLE_EQ(h200->memory_bytes, 140.0 * (1 << 30));
}

TEST(ClusterConfig, InlineHardwareAndPathReference) {
  TempDir dir;
  dir.Write("hardware/mine.yaml", kGoodHardware);
  auto by_name = LoadClusterConfig(dir.Write("clusters/a.yaml", "name: a\nnodes: 2\ndevices_per_node: 4\nhardware: mine\n"));
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  EXPECT_EQ(by_name->hardware.name, "test gpu");
  auto by_path =
      LoadClusterConfig(dir.Write("clusters/b.yaml", "name: b\nnodes: 1\ndevices_per_node: 8\nhardware: ../hardware/mine.yaml\n"));
  ASSERT_TRUE(by_path.ok()) << by_path.status();
  auto inline_hw = LoadClusterConfig(dir.Write(
      "clusters/c.yaml", std::string("name: c\nnodes: 1\ndevices_per_node: 8\nhardware:\n") +
                             "  name: x\n  memory_gb: 10\n  memory_bandwidth_gb_s: 100\n  bf16_tflops: 1\n"
                             "  intra_node_gb_s: 10\n  nic_gb_s: 1\n  nic_latency_us: 5\n"));
  ASSERT_TRUE(inline_hw.ok()) << inline_hw.status();
  EXPECT_DOUBLE_EQ(inline_hw->hardware.memory_bytes, 10e9);
}

void ExpectError(const absl::StatusOr<ClusterConfig>& c, const std::vector<std::string>& parts) {
  ASSERT_FALSE(c.ok());
  for (const std::string& part : parts) {
    EXPECT_NE(std::string(c.status().message()).find(part), std::string::npos)
        << "message \"" << c.status().message() << "\" lacks \"" << part << "\"";
  }
}

TEST(ClusterConfig, ErrorsNameTheFileAndTheKey) {
  TempDir dir;
  dir.Write("hardware/mine.yaml", kGoodHardware);
  ExpectError(LoadClusterConfig(dir.Write("clusters/x.yaml", "name: x\nnodes: 2\ndevices_per_node: 8\nhardware: h900\n")),
              {"x.yaml", "hardware", "unknown hardware \"h900\""});
  ExpectError(LoadClusterConfig(dir.Write("clusters/x.yaml", "name: x\nnodez: 2\ndevices_per_node: 8\nhardware: mine\n")),
              {"x.yaml", "unknown key \"nodez\""});
  ExpectError(LoadClusterConfig(dir.Write("clusters/x.yaml", "name: x\ndevices_per_node: 8\nhardware: mine\n")),
              {"x.yaml", "\"nodes\" is missing"});
  ExpectError(LoadClusterConfig(dir.Write("clusters/x.yaml", "name: x\nnodes: two\ndevices_per_node: 8\nhardware: mine\n")),
              {"\"nodes\" must be an integer", "two"});
  ExpectError(LoadClusterConfig(dir.Write("clusters/x.yaml", "name: x\nnodes: 0\ndevices_per_node: 8\nhardware: mine\n")),
              {"\"nodes\" must be >= 1"});
  ExpectError(LoadClusterConfig(dir.Write("clusters/x.yaml", "name: [x\n")), {"x.yaml", "not valid YAML"});
  ExpectError(LoadClusterConfig("/nonexistent/cluster.yaml"),
              {"/nonexistent/cluster.yaml", "cannot open"});
  ExpectError(LoadClusterConfig(dir.Write("clusters/x.yaml",
                                          "name: x\nnodes: 1\ndevices_per_node: 8\nhardware: mine\ndeployment:\n  epp: 8\n")),
              {"unknown key \"deployment.epp\""});
  dir.Write("hardware/bad.yaml", "name: bad\nmemory_gib: 80\nmemory_gb: 80\nmemory_bandwidth_gb_s: 1\nbf16_tflops: 1\n"
                                 "intra_node_gb_s: 1\nnic_gb_s: 1\nnic_latency_us: 1\n");
  ExpectError(LoadClusterConfig(dir.Write("clusters/x.yaml", "name: x\nnodes: 1\ndevices_per_node: 8\nhardware: bad\n")),
              {"bad.yaml", "memory_gib", "one of them"});
  dir.Write("hardware/neg.yaml", "name: neg\nmemory_gib: 80\nmemory_bandwidth_gb_s: -1\nbf16_tflops: 1\n"
                                 "intra_node_gb_s: 1\nnic_gb_s: 1\nnic_latency_us: 1\n");
  ExpectError(LoadClusterConfig(dir.Write("clusters/x.yaml", "name: x\nnodes: 1\ndevices_per_node: 8\nhardware: neg\n")),
              {"neg.yaml", "memory_bandwidth_gb_s", "must be positive"});
}

}  // namespace
}  // namespace daedalus
