// plan --calibrate on recorded `bench --json` outputs of three kernel tiers (avx2, avx512,
// avx512bf16: one Zen 4 machine with DAEDALUS_CPU_ISA forcing each tier, the tiers users' CPUs
// have), of one and of every thread of a machine, and `bench-a2a --json` over MPI and UCX on
// one host: the hardware files are the golden ones, they load, and every number equals the
// measurement it names. Bad input is refused with the file and the key named.
#include "planner/calibrate.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "core/cluster_config.h"
#include "nlohmann/json.hpp"

namespace daedalus {
namespace {

const std::string kData = std::string(DAEDALUS_SOURCE_DIR) + "/tests/planner/data/calibrate/";

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

CalibrationFile File(const std::string& name) { return {kData + name, Read(kData + name)}; }

class CalibrateTiers : public ::testing::TestWithParam<const char*> {};

TEST_P(CalibrateTiers, WritesTheGoldenFileWhoseNumbersAreTheMeasurements) {
  const std::string tier = GetParam();
  auto yaml = CalibrateHardware({File("bench-" + tier + ".json"), File("a2a-mpi-1host.json")});
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(*yaml, Read(kData + "hardware-" + tier + ".yaml"));
  auto hw = ParseHardwareSpec(*yaml, "calibrated");
  ASSERT_TRUE(hw.ok()) << hw.status();
  // Independently of the golden text: each number is the JSON's, to the 4 digits written.
  const auto bench = nlohmann::json::parse(Read(kData + "bench-" + tier + ".json"));
  auto near = [](double got, double want) { return std::abs(got - want) <= 5e-4 * std::abs(want); };
  EXPECT_EQ(hw->kind, "cpu");
  EXPECT_EQ(hw->kernel_tier, bench["machine"]["isa"].get<std::string>());
  EXPECT_EQ(hw->threads, bench["machine"]["threads"].get<int64_t>());
  EXPECT_TRUE(near(hw->memory_bandwidth / 1e9, bench["bandwidth_gbs"].get<double>()));
  EXPECT_TRUE(near(hw->bf16_flops / 1e9, bench["bf16_peak_gflops"].get<double>()));
  EXPECT_TRUE(near(hw->fp32_flops / 1e9, bench["fp32_peak_gflops"].get<double>()));
  EXPECT_TRUE(near(hw->prefill_flops_achieved / 1e9, bench["prefill_gflops"].get<double>()));
  EXPECT_TRUE(near(hw->memory_bytes / (1 << 30), bench["machine"]["memory_gib"].get<double>()));
  ASSERT_EQ(hw->decode_share_of_roofline.size(), bench["decode_share_of_roofline"].size());
  for (const auto& [batch, share] : bench["decode_share_of_roofline"].items()) {
    EXPECT_TRUE(near(hw->decode_share_of_roofline.at(std::stoll(batch)), share.get<double>())) << batch;
  }
  // The exchange: bytes over time at the largest token count, both phases.
  const auto a2a = nlohmann::json::parse(Read(kData + "a2a-mpi-1host.json"));
  double bytes = 0, us = 0;
  for (const auto& row : a2a["results"]) {
    if (row["tokens"] == 1024) {
      bytes += row["bytes_per_rank"].get<double>();
      us += row["ours_us"].get<double>();
    }
  }
  EXPECT_TRUE(near(hw->intra_node_bandwidth, bytes / (us * 1e-6)));
  EXPECT_EQ(hw->nic_bandwidth, hw->intra_node_bandwidth);  // no cross-host run: stands in, and says so
  EXPECT_NE(yaml->find("no bench-a2a run across hosts was given"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Tiers, CalibrateTiers, ::testing::Values("avx2", "avx512", "avx512bf16"));

// One machine's `bench` with one thread (a worker) and with two (every core busy): the device's
// figures come from the first, the node's shared bandwidth and decode shares from the second.
TEST(Calibrate, ARunWithEveryCoreBusyGivesTheNodeFigures) {
  auto yaml = CalibrateHardware(
      {File("bench-small-2threads.json"), File("bench-small-1thread.json"), File("a2a-mpi-1host.json")});
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(*yaml, Read(kData + "hardware-node.yaml"));
  auto hw = ParseHardwareSpec(*yaml, "calibrated");
  ASSERT_TRUE(hw.ok()) << hw.status();
  const auto one = nlohmann::json::parse(Read(kData + "bench-small-1thread.json"));
  const auto node = nlohmann::json::parse(Read(kData + "bench-small-2threads.json"));
  auto near = [](double got, double want) { return std::abs(got - want) <= 5e-4 * std::abs(want); };
  EXPECT_EQ(hw->threads, 1);
  EXPECT_TRUE(near(hw->memory_bandwidth / 1e9, one["bandwidth_gbs"].get<double>()));
  EXPECT_TRUE(near(hw->prefill_flops_achieved / 1e9, one["prefill_gflops"].get<double>()));
  EXPECT_EQ(hw->node_threads, 2);
  // Two devices of one thread share the machine's memory.
  EXPECT_TRUE(near(hw->memory_bytes / (1 << 30), one["machine"]["memory_gib"].get<double>() / 2));
  EXPECT_TRUE(near(hw->node_memory_bandwidth / 1e9, node["bandwidth_gbs"].get<double>()));
  ASSERT_EQ(hw->node_decode_share_of_roofline.size(), node["decode_share_of_roofline"].size());
  for (const auto& [batch, share] : node["decode_share_of_roofline"].items()) {
    EXPECT_TRUE(near(hw->node_decode_share_of_roofline.at(std::stoll(batch)), share.get<double>())) << batch;
    EXPECT_TRUE(near(hw->decode_share_of_roofline.at(std::stoll(batch)),
                     one["decode_share_of_roofline"][batch].get<double>())) << batch;
  }
  // One thread count only: no node figures.
  auto single = CalibrateHardware({File("bench-small-1thread.json"), File("a2a-mpi-1host.json")});
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ(single->find("node_threads"), std::string::npos);
}

TEST(Calibrate, SeveralRunsGiveTheMedianAndCrossHostRunsTheNic) {
  nlohmann::json a = nlohmann::json::parse(Read(kData + "bench-avx512bf16.json")), b = a, c = a;
  a["bandwidth_gbs"] = 40.0;
  b["bandwidth_gbs"] = 50.0;
  c["bandwidth_gbs"] = 70.0;
  nlohmann::json across = nlohmann::json::parse(Read(kData + "a2a-ucx-1host.json"));
  across["hosts"] = 2;  // the same shape of output, as two hosts would give it
  for (auto& row : across["results"]) row["ours_us"] = row["ours_us"].get<double>() * 4;
  auto yaml = CalibrateHardware({{"a.json", a.dump()}, {"b.json", b.dump()}, {"c.json", c.dump()},
                                 File("a2a-ucx-1host.json"), {"across.json", across.dump()}});
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  auto hw = ParseHardwareSpec(*yaml, "calibrated");
  ASSERT_TRUE(hw.ok()) << hw.status();
  EXPECT_DOUBLE_EQ(hw->memory_bandwidth, 50e9);
  EXPECT_NE(yaml->find("median of a.json, b.json, c.json"), std::string::npos);
  EXPECT_NEAR(hw->nic_bandwidth / hw->intra_node_bandwidth, 0.25, 1e-3);
  EXPECT_EQ(yaml->find("stands in"), std::string::npos);
}

TEST(Calibrate, BadInputNamesTheFileAndTheKey) {
  const std::string bench = Read(kData + "bench-avx512.json");
  const CalibrationFile a2a = File("a2a-mpi-1host.json");
  auto refused = [&](std::vector<CalibrationFile> files) {
    auto r = CalibrateHardware(files);
    EXPECT_FALSE(r.ok());
    return std::string(r.status().message());
  };
  auto edited = [&](auto edit) {
    nlohmann::json j = nlohmann::json::parse(bench);
    edit(j);
    return CalibrationFile{"run.json", j.dump()};
  };
  std::string m = refused({{"run.json", "bandwidth: 12"}, a2a});
  EXPECT_NE(m.find("run.json: not JSON"), std::string::npos) << m;
  m = refused({edited([](auto& j) { j["machine"].erase("isa"); }), a2a});
  EXPECT_NE(m.find("run.json: key \"machine.isa\" is missing"), std::string::npos) << m;
  m = refused({edited([](auto& j) { j["bandwidth_gbs"] = -3.5; }), a2a});
  EXPECT_NE(m.find("run.json: key \"bandwidth_gbs\" must be positive, found -3.5"), std::string::npos) << m;
  m = refused({edited([](auto& j) { j["prefill_gflops"] = "fast"; }), a2a});
  EXPECT_NE(m.find("run.json: key \"prefill_gflops\" must be a number"), std::string::npos) << m;
  m = refused({edited([](auto& j) { j.erase("bench"); }), a2a});
  EXPECT_NE(m.find("run.json: key \"bench\" is missing"), std::string::npos) << m;
  nlohmann::json broken = nlohmann::json::parse(a2a.text);
  broken["results"][1].erase("ours_us");
  m = refused({{"run.json", bench}, {"x.json", broken.dump()}});
  EXPECT_NE(m.find("x.json: key \"results.1.ours_us\" is missing"), std::string::npos) << m;
  m = refused({{"run.json", bench}});
  EXPECT_NE(m.find("within one host"), std::string::npos) << m;
  m = refused({a2a});
  EXPECT_NE(m.find("no `daedalus bench --json` output"), std::string::npos) << m;
  m = refused({{"run.json", bench}, File("bench-avx2.json"), a2a});
  EXPECT_NE(m.find("one hardware file describes one machine and tier"), std::string::npos) << m;
}

}  // namespace
}  // namespace daedalus
