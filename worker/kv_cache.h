// The paged latent KV cache: per token and layer it holds RMSNorm(c_kv) [kv_lora_rank] then
// the rotated k_pe [qk_rope_head_dim] — nothing per head — in the row format of core/kv_row.h
// (f32, bf16, or FP8 codes with per-128 scales and a bf16 k_pe). A page holds `page_size`
// tokens of every layer; a sequence owns a list of pages. Not thread-safe: the step loop owns it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "core/dtype.h"
#include "core/model_config.h"

namespace daedalus {

struct KvCacheOptions {
  DType dtype = DType::kBF16;  // kBF16 (default), kF32 or kF8E4M3
  int64_t page_size = 64;      // tokens per page
  int64_t max_tokens = 1 << 16;  // capacity, rounded up to whole pages
  // false: page bookkeeping only, the latents live elsewhere (a GPU backend); Write and Read
  // must not be called.
  bool host_pool = true;
};

class PagedKvCache {
 public:
  PagedKvCache(const ModelConfig& config, const KvCacheOptions& options);

  using PageTable = std::vector<int32_t>;

  // Grows `pages` so that it covers `n_tokens` positions; ResourceExhausted when the pool is empty.
  absl::Status Reserve(PageTable& pages, int64_t n_tokens);
  void Release(PageTable& pages);

  // Stores one token's latent (kv_lora_rank + qk_rope_head_dim floats) at `pos`, rounded to the
  // cache's dtype (FP8: each block of 128 latent values scaled so that its largest maps to 448).
  void Write(const PageTable& pages, int64_t layer, int64_t pos, const float* latent);
  // Reads positions [begin, begin + n) of `layer` as float rows into out [n, dim], decoding the
  // stored rows in place (callers read a few rows at a time, never the whole context).
  void Read(const PageTable& pages, int64_t layer, int64_t begin, int64_t n, float* out) const;
  void Read(const PageTable& pages, int64_t layer, int64_t n, float* out) const { Read(pages, layer, 0, n, out); }

  int64_t dim() const { return dim_; }
  DType dtype() const { return options_.dtype; }
  int64_t page_size() const { return options_.page_size; }
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }
  int64_t total_pages() const { return total_pages_; }
  // Bytes of cache one token occupies in a full page, over all layers (the page table's
  // 4 bytes per page included).
  double BytesPerToken() const;

 private:
  uint8_t* Row(int32_t page, int64_t layer, int64_t slot) const;

  KvCacheOptions options_;
  int64_t layers_, dim_, kv_lora_rank_, total_pages_;
  size_t row_bytes_, page_bytes_;
  std::unique_ptr<uint8_t[]> pool_;  // uninitialised: pages are committed when first written
  std::vector<int32_t> free_;
};

}  // namespace daedalus
