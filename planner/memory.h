// Device memory of one expert-parallel device, by part, and the latent KV cache that fits in
// what is left. The fullest device is planned (it holds the most routed-expert slots).
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/cluster_config.h"
#include "core/dtype.h"
#include "core/model_config.h"
#include "planner/efficiency.h"
#include "planner/model_shape.h"

namespace daedalus {

struct MemoryBreakdown {
  double total = 0;                     // device memory
  double reserved = 0;                  // kept free for the runtime (Efficiency::reserved_memory_fraction)
  double attention_and_dense = 0;       // MLA projections, dense MLP layers, embeddings, lm_head, gates, norms
  double shared_experts = 0;
  double routed_experts_own = 0;        // the device's share of the n_routed_experts (E / EP slots)
  double routed_experts_redundant = 0;  // the rest of its slots: replicas of hot experts
  double activations = 0;               // live activations of all micro-batches
  double communication_buffers = 0;     // dispatch / combine buffers
  double kv_cache = 0;                  // left for the latent cache
  double kv_needed = 0;                 // what the plan's sequences hold
  int64_t kv_bytes_per_token = 0;       // what a cached token takes here (with an MTP module's layer)
  int64_t kv_capacity_tokens = 0;
  int64_t kv_capacity_sequences = 0;    // at the plan's tokens per sequence

  double weights() const {
    return attention_and_dense + shared_experts + routed_experts_own + routed_experts_redundant;
  }
  // Used by the plan: everything but the unused part of the KV pool.
  double used() const { return reserved + weights() + activations + communication_buffers + kv_needed; }
};

struct MemoryRequest {
  DType weight_dtype = DType::kF8E4M3;
  DType kv_dtype = DType::kBF16;
  int64_t ep = 1;
  int64_t expert_slots = 0;              // routed experts on the fullest device
  double tokens_per_micro_batch = 0;     // computed tokens per device
  int64_t micro_batches = 1;
  double routed_pairs_per_micro_batch = 0;  // (token, expert) pairs the busiest device serves
  bool low_latency_all_to_all = true;    // buffers sized for the worst case (decode) or fixed (prefill)
  bool naive_attention = false;          // prefill: K and V decompressed per micro-batch
  double attended_tokens_per_micro_batch = 0;  // prefill: keys decompressed (cached prefix included)
  double logits_rows_per_micro_batch = 0;
  int64_t sequences = 0;                 // held in the cache
  int64_t tokens_per_sequence = 0;
  // MTP modules run beside the model (decode with MTP): each adds an MoE layer's weights, its
  // routed experts spread as the model's are, and a layer's latent cache to every token.
  int64_t mtp_layers = 0;
};

// Fails with ResourceExhausted, naming what does not fit and by how much, when the weights,
// buffers and activations exceed the device or the sequences' cache exceeds what is left.
absl::StatusOr<MemoryBreakdown> PlanMemory(const ModelConfig& config, const HardwareSpec& hardware,
                                           const Efficiency& efficiency, const MemoryRequest& request);

}  // namespace daedalus
