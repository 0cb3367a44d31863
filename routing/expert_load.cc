#include "routing/expert_load.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace daedalus {

absl::Status WriteExpertLoad(const std::string& path, const ExpertLoad& load, int64_t n_routed_experts) {
  nlohmann::json j;
  j["n_routed_experts"] = n_routed_experts;
  j["layers"] = load;
  std::ofstream out(path);
  out << j.dump() << "\n";
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

absl::StatusOr<ExpertLoad> ReadExpertLoad(const std::string& path, int64_t num_hidden_layers, int64_t n_routed_experts) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  auto bad = [&](const std::string& what) { return absl::InvalidArgumentError(absl::StrCat(path, ": ", what)); };
  if (j.is_discarded() || !j.is_object() || !j.contains("layers") || !j["layers"].is_array()) {
    return bad("expected a JSON object with a \"layers\" array");
  }
  if (!j.contains("n_routed_experts") || j["n_routed_experts"] != n_routed_experts) {
    return bad(absl::StrCat("n_routed_experts must be ", n_routed_experts, " (the model's)"));
  }
  if (static_cast<int64_t>(j["layers"].size()) != num_hidden_layers) {
    return bad(absl::StrCat("expected ", num_hidden_layers, " layers, found ", j["layers"].size()));
  }
  ExpertLoad load;
  for (const auto& layer : j["layers"]) {
    if (!layer.is_array() || (!layer.empty() && static_cast<int64_t>(layer.size()) != n_routed_experts)) {
      return bad(absl::StrCat("layer ", load.size(), ": expected an empty array or ", n_routed_experts, " counts"));
    }
    std::vector<int64_t> counts;
    for (const auto& c : layer) {
      if (!c.is_number_integer() || c.get<int64_t>() < 0) return bad(absl::StrCat("layer ", load.size(), ": counts must be non-negative integers"));
      counts.push_back(c.get<int64_t>());
    }
    load.push_back(std::move(counts));
  }
  return load;
}

absl::StatusOr<std::vector<Placement>> PlaceLayers(const ExpertLoad& load, int64_t num_hidden_layers,
                                                   int64_t n_routed_experts, int64_t n_group, int world_size,
                                                   int ranks_per_node, int redundant) {
  const bool hierarchical = ranks_per_node > 0 && world_size / ranks_per_node > 1;
  std::vector<Placement> placements;
  for (int64_t l = 0; l < num_hidden_layers; ++l) {
    std::vector<double> weights;
    if (l < static_cast<int64_t>(load.size())) weights.assign(load[l].begin(), load[l].end());
    absl::StatusOr<Placement> p =
        hierarchical ? ComputeHierarchicalPlacement(static_cast<int>(n_routed_experts), static_cast<int>(n_group),
                                                    world_size, ranks_per_node, redundant, weights)
                     : ComputePlacement(static_cast<int>(n_routed_experts), world_size, redundant, weights);
    if (!p.ok()) return p.status();
    placements.push_back(*std::move(p));
  }
  return placements;
}

}  // namespace daedalus
