// Closed-loop serving predictions (planner/serving.h) on a hardware file calibrated from
// recorded `bench` and `bench-a2a` outputs: the cycle arithmetic, TTFT from the closed-loop
// simulation, the node's shared memory bandwidth (devices of a CPU node step together and share
// it), and the refusal of hardware without measured figures.
#include "planner/serving.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "planner/calibrate.h"
#include "planner/closed_loop.h"

namespace daedalus {
namespace {

const std::string kData = std::string(DAEDALUS_SOURCE_DIR) + "/tests/planner/data/calibrate/";

CalibrationFile File(const std::string& name) {
  std::ifstream in(kData + name);
  std::stringstream s;
  s << in.rdbuf();
  return {kData + name, s.str()};
}

// This machine's one-thread figures (and, with `node`, the two-thread run) as 1 node of 2
// one-thread workers, serving the `small` preset's bf16 checkpoint as `serve` does.
ClusterConfig Local(bool node) {
  std::vector<CalibrationFile> files = {File("bench-small-1thread.json"), File("a2a-mpi-1host.json")};
  if (node) files.push_back(File("bench-small-2threads.json"));
  auto yaml = CalibrateHardware(files);
  EXPECT_TRUE(yaml.ok()) << yaml.status();
  auto hw = ParseHardwareSpec(*yaml, "calibrated");
  EXPECT_TRUE(hw.ok()) << hw.status();
  ClusterConfig c;
  c.name = "local";
  c.nodes = 1;
  c.devices_per_node = 2;
  c.hardware = *hw;
  return c;
}

Workload Base() {
  Workload w;
  w.weight_dtype = DType::kBF16;
  w.micro_batches = 1;
  return w;
}

// The `small` preset's shape, as the planner's model configs hold it.
ModelConfig Small() {
  auto c = ModelConfig::Load(std::string(DAEDALUS_SOURCE_DIR) + "/cluster-configs/models/small/config.json");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

ServingPrediction Predict(const ClusterConfig& c, int64_t concurrency) {
  auto p = PredictServing(Small(), c, Base(), ServingLoad{concurrency, 128, 64});
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *p : ServingPrediction{};
}

TEST(Serving, OutputIsTheCycleOfDecodeStepsAndPrefills) {
  for (int64_t c : {1, 2, 16, 64}) {
    const ServingPrediction p = Predict(Local(true), c);
    EXPECT_EQ(p.workers, 2);
    EXPECT_EQ(p.busy_workers, std::min<int64_t>(2, c));
    EXPECT_EQ(p.batch_per_worker, (c + 1) / 2);
    const double b = static_cast<double>(c) / p.busy_workers;
    const double cycle = 63 * p.decode_step_s + b * p.prefill_s;
    EXPECT_NEAR(p.output_tokens_per_s, p.busy_workers * b * 64 / cycle, 1e-9 * p.output_tokens_per_s) << c;
    EXPECT_DOUBLE_EQ(p.itl_s, p.decode_step_s);
    EXPECT_GT(p.decode_step_s, 0);
    EXPECT_GT(p.prefill_s, p.decode_step_s);  // a 128-token prompt outweighs one decode token
    // TTFT: the closed loop stepped through with these costs.
    const ClosedLoopResult loop = SimulateClosedLoop({c, p.busy_workers, 128, 64, 512, 512},
                                                     {p.decode_step_s, p.prefill_s / 128}, std::max<int64_t>(200, 20 * c));
    EXPECT_DOUBLE_EQ(p.ttft_s, loop.ttft_p50_s) << c;
  }
  // One client waits for its own prefill only; 64 clients' prompts come in waves.
  EXPECT_NEAR(Predict(Local(true), 1).ttft_s, Predict(Local(true), 1).prefill_s, 1e-9);
  EXPECT_GT(Predict(Local(true), 64).ttft_s, 2 * Predict(Local(true), 64).prefill_s);
}

TEST(Serving, DevicesOfANodeShareItsMemoryBandwidth) {
  const ClusterConfig alone = Local(false), shared = Local(true);
  // Contended bandwidth (two workers' share of 33 GB/s, against 25 alone) at the two-thread
  // run's decode shares: slower memory-bound decode steps (batch 1 and 8 per worker); at 32 per
  // worker the step is mostly compute, which keeps the device's own figures: never faster.
  for (int64_t c : {1, 16}) EXPECT_GT(Predict(shared, c).decode_step_s, Predict(alone, c).decode_step_s) << c;
  EXPECT_GE(Predict(shared, 64).decode_step_s, Predict(alone, 64).decode_step_s);
  // A node with twice a device's bandwidth at the device's own shares contends for nothing:
  // the same prediction as without node figures.
  ClusterConfig roomy = alone;
  roomy.hardware.node_memory_bandwidth = 2 * alone.hardware.memory_bandwidth;
  roomy.hardware.node_decode_share_of_roofline = alone.hardware.decode_share_of_roofline;
  EXPECT_DOUBLE_EQ(Predict(roomy, 16).decode_step_s, Predict(alone, 16).decode_step_s);
  // A node that has no more bandwidth than one device: each of the two gets half, so the
  // memory-bound step at batch 1 takes nearly twice as long (the all-to-all's time stays).
  ClusterConfig tight = roomy;
  tight.hardware.node_memory_bandwidth = alone.hardware.memory_bandwidth;
  const double ratio = Predict(tight, 1).decode_step_s / Predict(alone, 1).decode_step_s;
  EXPECT_GT(ratio, 1.5);
  EXPECT_LE(ratio, 2.0 + 1e-9);
}

TEST(Serving, HardwareWithoutMeasuredFiguresIsRefused) {
  ClusterConfig c = Local(false);
  c.hardware.decode_share_of_roofline.clear();
  auto p = PredictServing(Small(), c, Base(), ServingLoad{});
  ASSERT_FALSE(p.ok());
  EXPECT_NE(std::string(p.status().message()).find("plan --calibrate"), std::string::npos) << p.status();
}

}  // namespace
}  // namespace daedalus
