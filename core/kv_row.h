// One token's latent KV row for one layer, as the paged cache stores it (and as the planner
// counts it): RMSNorm(c_kv) [kv_lora_rank] then the rotated k_pe [qk_rope_head_dim].
//   kF32, kBF16: every element in that dtype.
//   kF8E4M3 (FlashMLA's layout): kv_lora_rank e4m3 codes, then one fp32 scale per 128 codes
//     (code · scale is the value; the last block may be partial), then k_pe in bf16. For
//     DeepSeek-V3: 512 + 4 × 4 + 64 × 2 = 656 bytes.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/model_config.h"

namespace daedalus {

constexpr int64_t kKvFp8Block = 128;  // latent values per fp8 scale

constexpr int64_t KvFp8Scales(int64_t kv_lora_rank) { return (kv_lora_rank + kKvFp8Block - 1) / kKvFp8Block; }

inline int64_t KvRowBytes(int64_t kv_lora_rank, int64_t qk_rope_head_dim, DType dtype) {
  switch (dtype) {
    case DType::kF32: return (kv_lora_rank + qk_rope_head_dim) * 4;
    case DType::kBF16: return (kv_lora_rank + qk_rope_head_dim) * 2;
    case DType::kF8E4M3: return kv_lora_rank + KvFp8Scales(kv_lora_rank) * 4 + qk_rope_head_dim * 2;
  }
  return 0;
}
inline int64_t KvRowBytes(const ModelConfig& c, DType dtype) { return KvRowBytes(c.kv_lora_rank, c.qk_rope_head_dim, dtype); }

// Encodes one row as kF8E4M3: per block of 128 latent values scale = max |v| / 448 and codes
// e4m3(v / scale) (saturating, ties to even); then k_pe in bf16. `row` takes KvRowBytes bytes.
void WriteKvRowFp8(const float* latent, int64_t kv_lora_rank, int64_t qk_rope_head_dim, uint8_t* row);

}  // namespace daedalus
