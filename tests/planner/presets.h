// The model and cluster presets under cluster-configs/, for planner tests.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "core/cluster_config.h"
#include "core/model_config.h"
#include "planner/plan.h"
#include "planner/sweep.h"

namespace daedalus {

inline const std::string kConfigDir = std::string(DAEDALUS_SOURCE_DIR) + "/cluster-configs";

inline ModelConfig PresetModel(const std::string& name) {
  auto c = ModelConfig::Load(kConfigDir + "/models/" + name + "/config.json");
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

inline ClusterConfig PresetCluster(const std::string& name) {
  auto c = LoadClusterConfig(kConfigDir + "/clusters/" + name + ".yaml");
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ClusterConfig{};
}

// The workload `daedalus plan` builds for a preset with no flags.
inline Workload PresetWorkload(const ModelConfig& model, const ClusterConfig& cluster) {
  Workload w;
  w.weight_dtype = model.fp8 ? DType::kF8E4M3 : DType::kBF16;
  for (const Setting& s : DeploymentSettings(cluster.deployment)) {
    absl::Status st = ApplySetting(s, w);
    EXPECT_TRUE(st.ok()) << st;
  }
  return w;
}

}  // namespace daedalus
