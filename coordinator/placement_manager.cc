#include "coordinator/placement_manager.h"

#include <algorithm>
#include <cmath>

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
    : config_(config), options_(std::move(options)), world_size_(options_.world_size) {
  measured_.resize(config_.num_hidden_layers);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l)
    if (config_.is_moe_layer(l)) measured_[l].assign(config_.n_routed_experts, 0);
  Reset();
}

void PlacementManager::Reset(int world_size) {
  version_ = 0;
  world_size_ = world_size > 0 ? world_size : options_.world_size;
  placement_ = Compute();
}

int64_t PlacementManager::RemoveRank(int rank) {
  int64_t orphaned = 0;
  for (int64_t l = 0; l < config_.num_hidden_layers && l < placement_.layers_size(); ++l) {
    auto* on = placement_.mutable_layers(static_cast<int>(l))->mutable_experts_on();
    if (!config_.is_moe_layer(l) || rank >= on->size()) continue;
    const google::protobuf::RepeatedField<int32_t> gone = on->Get(rank).experts();
    on->DeleteSubrange(rank, 1);
    if (on->empty()) continue;
    std::vector<int> replicas(config_.n_routed_experts, 0);
    std::vector<double> load(on->size(), 0.0);
    for (int r = 0; r < on->size(); ++r) {
      for (int32_t e : on->Get(r).experts()) {
        ++replicas[e];
        load[r] += static_cast<double>(measured_[l][e]);
      }
    }
    for (int32_t e : gone) {
      if (replicas[e] > 0) continue;
      int best = 0;
      for (int r = 1; r < on->size(); ++r) {
        if (load[r] < load[best] || (load[r] == load[best] && on->Get(r).experts_size() < on->Get(best).experts_size())) best = r;
      }
      auto* experts = on->Mutable(best)->mutable_experts();
      experts->Add(e);
      std::sort(experts->begin(), experts->end());
      load[best] += static_cast<double>(measured_[l][e]);
      ++replicas[e];
      ++orphaned;
    }
  }
  --world_size_;
  ++version_;
  return orphaned;
}

void PlacementManager::AddRank() {
  for (int64_t l = 0; l < config_.num_hidden_layers && l < placement_.layers_size(); ++l) {
    if (config_.is_moe_layer(l)) placement_.mutable_layers(static_cast<int>(l))->add_experts_on();
  }
  ++world_size_;
  ++version_;
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

std::optional<v1::PlacementUpdate> PlacementManager::FillRank() {
  const int last = world_size_ - 1;
  bool moved = false;
  for (int64_t l = 0; l < config_.num_hidden_layers && l < placement_.layers_size() && last > 0; ++l) {
    auto* on = placement_.mutable_layers(static_cast<int>(l))->mutable_experts_on();
    if (!config_.is_moe_layer(l) || on->size() != world_size_) continue;
    std::vector<int> replicas(config_.n_routed_experts, 0);
    int64_t slots = 0;
    for (const auto& r : *on) {
      for (int32_t e : r.experts()) ++replicas[e];
      slots += r.experts_size();
    }
    bool measured = false;
    for (int64_t c : measured_[l]) measured |= c > 0;
    // An expert's load, split evenly over its replicas.
    auto load = [&](int32_t e) { return (measured ? static_cast<double>(measured_[l][e]) : 1.0) / replicas[e]; };
    std::vector<double> rank_load(world_size_, 0.0);
    for (int r = 0; r < world_size_; ++r)
      for (int32_t e : on->Get(r).experts()) rank_load[r] += load(e);
    auto holds = [&](int r, int32_t e) {
      const auto& x = on->Get(r).experts();
      return std::find(x.begin(), x.end(), e) != x.end();
    };
    while (on->Get(last).experts_size() < slots / world_size_) {
      int donor = -1;
      for (int r = 0; r < last; ++r) {
        if (on->Get(r).experts_size() <= 1) continue;
        if (donor < 0 || rank_load[r] > rank_load[donor] ||
            (rank_load[r] == rank_load[donor] && on->Get(r).experts_size() > on->Get(donor).experts_size())) {
          donor = r;
        }
      }
      if (donor < 0) break;
      int32_t best = -1;
      double gap = 0;
      for (int32_t e : on->Get(donor).experts()) {
        if (holds(last, e)) continue;
        const double g = std::abs((rank_load[donor] - load(e)) - (rank_load[last] + load(e)));
        if (best < 0 || g < gap) best = e, gap = g;
      }
      if (best < 0) break;
      auto* from = on->Mutable(donor)->mutable_experts();
      from->erase(std::find(from->begin(), from->end(), best));
      auto* to = on->Mutable(last)->mutable_experts();
      to->Add(best);
      std::sort(to->begin(), to->end());
      rank_load[donor] -= load(best);
      rank_load[last] += load(best);
      moved = true;
    }
  }
  if (!moved) return std::nullopt;
  return NextUpdate();
}

std::optional<v1::PlacementUpdate> PlacementManager::Rebalance() {
  v1::Placement next = Compute();
  if (next.layers_size() != config_.num_hidden_layers) return std::nullopt;  // not placeable over this world
  if (!(ImbalanceOf(next) < ImbalanceOf(placement_) * options_.rebalance_gain)) return std::nullopt;
  placement_ = std::move(next);
  return NextUpdate();
}

v1::PlacementUpdate PlacementManager::NextUpdate() {
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
                            config_.n_routed_experts, config_.n_group, world_size_, options_.ranks_per_node,
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
    const Placement p = FromProto(placement.layers(l), world_size_, config_.n_routed_experts);
    std::vector<double> load(measured_[l].begin(), measured_[l].end());
    double total = 0;
    for (double v : load) total += v;
    if (total > 0) worst = std::max(worst, p.Imbalance(load));
  }
  return worst;
}

}  // namespace daedalus
