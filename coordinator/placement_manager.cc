#include "coordinator/placement_manager.h"

#include <algorithm>

namespace daedalus {
namespace {

Placement FromProto(const v1::LayerExperts& layer, int world_size, int64_t n_experts) {
  Placement p;
  p.world_size = world_size;
  p.replicas.assign(n_experts, {});
  p.experts_on.assign(world_size, {});
  for (int r = 0; r < layer.experts_on_size() && r < world_size; ++r) {
    for (int32_t e : layer.experts_on(r).experts()) {
      p.experts_on[r].push_back(e);
      if (e >= 0 && e < n_experts) p.replicas[e].push_back(r);
    }
  }
  return p;
}

}  // namespace

PlacementManager::PlacementManager(const ModelConfig& config, PlacementOptions options)
    : config_(config), options_(std::move(options)) {
  measured_.resize(config_.num_hidden_layers);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l)
    if (config_.is_moe_layer(l)) measured_[l].assign(config_.n_routed_experts, 0);
  Reset();
}

void PlacementManager::Reset() {
  version_ = 0;
  placement_ = Compute();
}

void PlacementManager::AddLoad(const google::protobuf::RepeatedField<int64_t>& expert_tokens) {
  int at = 0;
  for (auto& layer : measured_) {
    for (auto& count : layer) {
      if (at >= expert_tokens.size()) return;
      count += expert_tokens.Get(at++);
    }
  }
}

std::optional<v1::PlacementUpdate> PlacementManager::Rebalance() {
  v1::Placement next = Compute();
  if (!(ImbalanceOf(next) < ImbalanceOf(placement_) * options_.rebalance_gain)) return std::nullopt;
  placement_ = std::move(next);
  v1::PlacementUpdate update;
  update.set_version(++version_);
  *update.mutable_placement() = placement_;
  return update;
}

v1::Placement PlacementManager::Compute() const {
  bool measured = false;
  for (const auto& layer : measured_)
    for (int64_t c : layer) measured |= c > 0;
  v1::Placement out;
  auto placed = PlaceLayers(measured ? measured_ : options_.initial_load, config_.num_hidden_layers,
                            config_.n_routed_experts, config_.n_group, options_.world_size, options_.ranks_per_node,
                            options_.redundant_experts);
  if (!placed.ok()) return out;  // the coordinator checks the placement at start-up
  for (const Placement& p : *placed) {
    v1::LayerExperts* layer = out.add_layers();
    for (const auto& experts : p.experts_on) *layer->add_experts_on()->mutable_experts() = {experts.begin(), experts.end()};
  }
  return out;
}

double PlacementManager::ImbalanceOf(const v1::Placement& placement) const {
  double worst = 1.0;
  for (int64_t l = 0; l < config_.num_hidden_layers && l < placement.layers_size(); ++l) {
    if (!config_.is_moe_layer(l)) continue;
    const Placement p = FromProto(placement.layers(l), options_.world_size, config_.n_routed_experts);
    std::vector<double> load(measured_[l].begin(), measured_[l].end());
    double total = 0;
    for (double v : load) total += v;
    if (total > 0) worst = std::max(worst, p.Imbalance(load));
  }
  return worst;
}

}  // namespace daedalus
