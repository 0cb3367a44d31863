// Settings by name (`daedalus plan` flag names without the dashes) and sweeps over them:
// "ep=8,16,32" x "batch-per-gpu=64,128" is every combination, in order.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/cluster_config.h"
#include "planner/plan.h"

namespace daedalus {

using Setting = std::pair<std::string, std::string>;  // name, value

struct SweepAxis {
  std::string name;
  std::vector<std::string> values;
};

// Names a sweep or a preset may set: phase, nodes, ep, redundant-experts, batch-per-gpu,
// avg-context, prompt-len, micro-batches, weight-dtype, kv-dtype, cache-hit-rate, synthetic-skew,
// mtp-acceptance; for phase pd also prefill-nodes, decode-nodes, output-len, prefill-batch-per-gpu.
const std::vector<std::string>& SettingNames();

// "name=v1,v2,..."; the name must be one of SettingNames().
absl::StatusOr<SweepAxis> ParseSweepAxis(const std::string& spec);
// Sets one field of `workload`; errors name the setting and the bad value.
absl::Status ApplySetting(const Setting& setting, Workload& workload);
// `workload` with every setting applied in order, or the first one's error.
absl::StatusOr<Workload> ApplySettings(const std::vector<Setting>& settings, Workload workload);
// A cluster preset's `deployment:` block as settings, in SettingNames() order.
std::vector<Setting> DeploymentSettings(const DeploymentDefaults& deployment);
// Every combination of the axes' values, the first axis varying slowest. No axes: one empty
// combination.
std::vector<std::vector<Setting>> ExpandSweep(const std::vector<SweepAxis>& axes);

}  // namespace daedalus
