// Expert load: how many (token, slot) pairs each layer routed to each expert, as counted by
// a run (`--expert-load-out`) and read back to place experts (`--placement-from`).
//
// File format (JSON): {"n_routed_experts": E, "layers": [[c_0, ..., c_{E-1}], ...]} with one
// array per hidden layer, empty for dense layers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "routing/placement.h"

namespace daedalus {

using ExpertLoad = std::vector<std::vector<int64_t>>;  // [layer][expert]

absl::Status WriteExpertLoad(const std::string& path, const ExpertLoad& load, int64_t n_routed_experts);
// Checks the file against the model: layer count and experts per layer.
absl::StatusOr<ExpertLoad> ReadExpertLoad(const std::string& path, int64_t num_hidden_layers, int64_t n_routed_experts);

// One placement per layer: from the layer's load where it has one, uniform otherwise.
// Hierarchical (whole routing groups per node) when ranks_per_node > 0 leaves more than one
// node; flat otherwise.
absl::StatusOr<std::vector<Placement>> PlaceLayers(const ExpertLoad& load, int64_t num_hidden_layers,
                                                   int64_t n_routed_experts, int64_t n_group, int world_size,
                                                   int ranks_per_node, int redundant);

}  // namespace daedalus
