#include "planner/memory.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/kv_row.h"
#include "planner/communication.h"

namespace daedalus {
namespace {

// Fixed staging buffers of node-deduplicated (normal) all-to-all kernels, which stream a batch
// through them in chunks instead of sizing them to it. An assumption.
constexpr double kNormalAllToAllBuffers = 2.0 * 1024 * 1024 * 1024;

std::string GiB(double bytes) { return absl::StrFormat("%.1f GiB", bytes / (1024.0 * 1024 * 1024)); }

}  // namespace

absl::StatusOr<MemoryBreakdown> PlanMemory(const ModelConfig& config, const HardwareSpec& hw,
                                           const Efficiency& efficiency, const MemoryRequest& r) {
  const ModelShape shape = ShapeOf(config);
  const double wb = WeightBytes(r.weight_dtype);
  const double bf16 = 2.0;
  const double h = static_cast<double>(config.hidden_size);
  MemoryBreakdown m;
  m.total = hw.memory_bytes;
  m.reserved = efficiency.reserved_memory_fraction * hw.memory_bytes;
  const double mtp = static_cast<double>(r.mtp_layers);
  m.attention_and_dense = (static_cast<double>(shape.layers) + mtp) * shape.attention_params * wb +
                          static_cast<double>(shape.dense_layers) * shape.dense_mlp_params * wb +
                          2.0 * shape.embedding_params * bf16 +
                          (static_cast<double>(shape.moe_layers) + mtp) * shape.gate_params * bf16 +
                          shape.norm_params * bf16 + mtp * (shape.mtp_proj_params * wb + shape.mtp_norm_params * bf16);
  const double expert_bytes = (static_cast<double>(shape.moe_layers) + mtp) * shape.expert_params * wb;
  m.shared_experts = expert_bytes * config.n_shared_experts;
  const double own_share = static_cast<double>(config.n_routed_experts) / r.ep;
  m.routed_experts_own = expert_bytes * std::min(own_share, static_cast<double>(r.expert_slots));
  m.routed_experts_redundant = expert_bytes * std::max(0.0, r.expert_slots - own_share);

  // Live per micro-batch, all micro-batches at once (they overlap): hidden states (residual,
  // normed input, attention and MoE outputs), the experts' received rows and their gate/up
  // outputs, decompressed K/V in naive prefill, logits.
  const double tokens = r.tokens_per_micro_batch, pairs = r.routed_pairs_per_micro_batch;
  double per_micro_batch = tokens * h * bf16 * 4;
  per_micro_batch += pairs * (DispatchRowBytes(config, r.weight_dtype) +
                              3.0 * config.moe_intermediate_size * bf16 + h * bf16);
  per_micro_batch += tokens * config.n_shared_experts * 3.0 * config.moe_intermediate_size * bf16;
  if (r.naive_attention) {
    per_micro_batch += r.attended_tokens_per_micro_batch * config.num_attention_heads *
                       static_cast<double>(config.qk_head_dim() + config.v_head_dim) * bf16;
  } else {
    per_micro_batch += tokens * config.num_attention_heads * static_cast<double>(config.kv_cache_dim()) * 4.0 * 2;
  }
  per_micro_batch += r.logits_rows_per_micro_batch * config.vocab_size * 4.0;
  m.activations = per_micro_batch * r.micro_batches;

  if (r.ep > 1) {
    if (r.low_latency_all_to_all) {
      // Per-expert kernels preallocate for the worst case: every rank's whole micro-batch
      // choosing this device's experts; dispatch and combine, one set per micro-batch in flight.
      m.communication_buffers = static_cast<double>(r.micro_batches) * r.expert_slots * r.ep *
                                std::ceil(tokens) * (DispatchRowBytes(config, r.weight_dtype) + CombineRowBytes(config));
    } else {
      m.communication_buffers = kNormalAllToAllBuffers;
    }
  }

  const double fixed = m.reserved + m.weights() + m.activations + m.communication_buffers;
  const int64_t kv_per_token = KvBytesPerToken(config, r.kv_dtype) + r.mtp_layers * KvRowBytes(config, r.kv_dtype);
  if (fixed >= m.total) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "does not fit: weights ", GiB(m.weights()), " (", r.expert_slots, " routed experts per layer per device at EP ",
        r.ep, "), activations ", GiB(m.activations), ", buffers ", GiB(m.communication_buffers), " and ",
        GiB(m.reserved), " reserved exceed the ", GiB(m.total), " of one ", hw.name,
        "; raise the EP degree, use FP8 weights or a device with more memory"));
  }
  m.kv_cache = m.total - fixed;
  m.kv_bytes_per_token = kv_per_token;
  m.kv_capacity_tokens = static_cast<int64_t>(m.kv_cache / kv_per_token);
  m.kv_capacity_sequences = r.tokens_per_sequence > 0 ? m.kv_capacity_tokens / r.tokens_per_sequence : 0;
  m.kv_needed = static_cast<double>(r.sequences) * r.tokens_per_sequence * kv_per_token;
  if (m.kv_needed > m.kv_cache) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "does not fit: ", r.sequences, " sequences x ", r.tokens_per_sequence, " tokens need ", GiB(m.kv_needed),
        " of KV cache (", kv_per_token, " B/token), but only ", GiB(m.kv_cache), " is left on one ", hw.name,
        " after weights (", GiB(m.weights()), "), activations, buffers and reserve; at most ", m.kv_capacity_sequences,
        " sequences fit per device"));
  }
  return m;
}

}  // namespace daedalus
