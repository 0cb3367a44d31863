#include "worker/kv_cache.h"

#include "absl/strings/str_cat.h"

namespace daedalus {

PagedKvCache::PagedKvCache(const ModelConfig& config, const KvCacheOptions& options)
    : options_(options), layers_(config.num_hidden_layers), dim_(config.kv_cache_dim()) {
  elem_ = DTypeSize(options.dtype);
  page_bytes_ = static_cast<size_t>(layers_ * options.page_size * dim_) * elem_;
  total_pages_ = (options.max_tokens + options.page_size - 1) / options.page_size;
  if (options.host_pool) pool_.reset(new uint8_t[page_bytes_ * total_pages_]);
  for (int64_t p = total_pages_ - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
}

absl::Status PagedKvCache::Reserve(PageTable& pages, int64_t n_tokens) {
  const int64_t needed = (n_tokens + options_.page_size - 1) / options_.page_size;
  if (needed - static_cast<int64_t>(pages.size()) > free_pages()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: ", n_tokens, " tokens need ", needed,
                                                     " pages, ", free_pages(), " free of ", total_pages_));
  }
  while (static_cast<int64_t>(pages.size()) < needed) {
    pages.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void PagedKvCache::Release(PageTable& pages) {
  for (auto it = pages.rbegin(); it != pages.rend(); ++it) free_.push_back(*it);
  pages.clear();
}

uint8_t* PagedKvCache::Row(int32_t page, int64_t layer, int64_t slot) const {
  // Page layout: [layer][slot][dim].
  return pool_.get() + page * page_bytes_ +
         static_cast<size_t>((layer * options_.page_size + slot) * dim_) * elem_;
}

void PagedKvCache::Write(const PageTable& pages, int64_t layer, int64_t pos, const float* latent) {
  uint8_t* row = Row(pages[pos / options_.page_size], layer, pos % options_.page_size);
  if (options_.dtype == DType::kF32) std::memcpy(row, latent, dim_ * 4);
  else F32ToBf16(latent, reinterpret_cast<bf16*>(row), dim_);
}

void PagedKvCache::Read(const PageTable& pages, int64_t layer, int64_t begin, int64_t n, float* out) const {
  for (int64_t pos = begin; pos < begin + n;) {
    const int64_t slot = pos % options_.page_size;
    const int64_t run = std::min(begin + n - pos, options_.page_size - slot);
    const uint8_t* row = Row(pages[pos / options_.page_size], layer, slot);
    float* dst = out + (pos - begin) * dim_;
    if (options_.dtype == DType::kF32) std::memcpy(dst, row, run * dim_ * 4);
    else Bf16ToF32(reinterpret_cast<const bf16*>(row), dst, run * dim_);
    pos += run;
  }
}

double PagedKvCache::BytesPerToken() const {
  return static_cast<double>(page_bytes_ + sizeof(int32_t)) / options_.page_size;
}

}  // namespace daedalus
