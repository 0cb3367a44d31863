// Plans as text: a readable report, one JSON object, or CSV rows; sweeps as a table.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/cluster_config.h"
#include "nlohmann/json.hpp"
#include "planner/efficiency.h"
#include "planner/plan.h"
#include "planner/sweep.h"

namespace daedalus {

// One planned (or failed) point of a sweep.
struct PlanResult {
  std::vector<Setting> settings;  // what the sweep changed
  absl::StatusOr<Plan> plan;
};

// "name=value name=value".
std::string SettingsText(const std::vector<Setting>& settings);

// The figure a result is compared with: the plan's value of `published.metric`.
std::optional<double> MetricValue(const Plan& plan, const std::string& metric);

// Flat keys (kv_bytes_per_token, kv_capacity_tokens_per_device, memory_per_device_bytes,
// input_tokens_per_s_per_node, output_tokens_per_s_per_node, ttft_ms, itl_ms, imbalance, ...)
// plus "memory", "time_ms" and "routing" objects. Throughput and latency that do not apply to
// the phase are null. `published`, when given, adds the preset's figure and the ratio.
nlohmann::ordered_json PlanJson(const std::string& model_name, const Plan& plan,
                                const std::optional<PublishedFigure>& published);
// For a failed point: its settings and "error".
nlohmann::ordered_json ErrorJson(const std::vector<Setting>& settings, const absl::Status& status);

// Header and rows of flat columns (settings first, then results, then "error").
std::string CsvHeader(const std::vector<Setting>& settings);
std::string CsvRow(const std::string& model_name, const PlanResult& result);

// The full report of one plan: memory by part, step time by operation, communication volumes,
// load imbalance, results and the efficiency factors used.
std::string PlanReport(const std::string& model_name, const Plan& plan, const Efficiency& efficiency,
                       const std::optional<PublishedFigure>& published);
// One line per point: settings, memory, throughput, latency, imbalance or the error.
std::string SweepTable(const std::vector<PlanResult>& results);

}  // namespace daedalus
