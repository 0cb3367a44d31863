#include "worker/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "core/host_memory.h"
#include "core/kv_row.h"
#include "kernels/ops.h"

namespace daedalus {

PagedKvCache::PagedKvCache(const ModelConfig& config, const KvCacheOptions& options)
    : options_(options), layers_(config.num_hidden_layers), dim_(config.kv_cache_dim()), kv_lora_rank_(config.kv_lora_rank) {
  row_bytes_ = static_cast<size_t>(KvRowBytes(config, options.dtype));
  page_bytes_ = static_cast<size_t>(layers_ * options.page_size) * row_bytes_;
  total_pages_ = (options.max_tokens + options.page_size - 1) / options.page_size;
  if (options.host_pool && options.pool != nullptr) {
    pool_ = options.pool;
  } else if (options.host_pool) {
    const size_t bytes = PoolBytes(config, options);
    owned_pool_.reset(new uint8_t[bytes]);
    pool_ = owned_pool_.get();
    Commit(pool_, bytes);
  }
  for (int64_t p = total_pages_ - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
  info_.resize(total_pages_);
  if (options.prefix_caching) page_tokens_.resize(static_cast<size_t>(total_pages_ * options.page_size));
}

// A page of the pool first written inside a decode step costs that step a page fault and the
// zeroing of a whole (huge) page, on the thread the others wait for (KvWrite): batch 64 on the
// `bench` preset spent 3.3% of a step in KvWrite with a fresh pool, 0.4% with one written here.
// Written over the threads, each page also lands on the NUMA node of the thread that wrote it.
void PagedKvCache::Commit(uint8_t* pool, size_t bytes) {
  constexpr size_t kPage = 4096;
#pragma omp parallel for schedule(static)
  for (size_t at = 0; at < bytes; at += kPage) pool[at] = 0;
}

absl::Status PagedKvCache::CheckFits(const ModelConfig& config, const KvCacheOptions& options, int sharing) {
  if (!options.host_pool || options.pool != nullptr) return absl::OkStatus();
  const int64_t need = static_cast<int64_t>(std::min<size_t>(PoolBytes(config, options), INT64_MAX));
  int64_t available = AvailableHostBytes();
  if (available < 0) return absl::OkStatus();
  sharing = std::max(sharing, 1);
  available /= sharing;
  if (need <= available) return absl::OkStatus();
  constexpr int64_t kMiB = 1 << 20;
  return absl::ResourceExhaustedError(absl::StrCat(
      "the KV cache pool needs ", (need + kMiB - 1) / kMiB, " MiB (", options.max_tokens, " tokens of ",
      KvRowBytes(config, options.dtype) * config.num_hidden_layers, " bytes) but ", available / kMiB,
      " MiB of memory is available to this process (MemAvailable, and its cgroup's limit",
      sharing > 1 ? absl::StrCat(", shared by the ", sharing, " processes started on this node") : std::string(),
      "); lower --kv-cache-tokens or --kv-cache-mib"));
}

size_t PagedKvCache::PoolBytes(const ModelConfig& config, const KvCacheOptions& options) {
  const size_t pages = static_cast<size_t>((options.max_tokens + options.page_size - 1) / options.page_size);
  size_t bytes = 0;  // SIZE_MAX where the product does not fit: no memory holds it
  if (__builtin_mul_overflow(pages, static_cast<size_t>(config.num_hidden_layers * options.page_size), &bytes) ||
      __builtin_mul_overflow(bytes, static_cast<size_t>(KvRowBytes(config, options.dtype)), &bytes)) {
    return SIZE_MAX;
  }
  return bytes;
}

int32_t PagedKvCache::TakePage() {
  if (free_.empty()) {  // the least recently used cached page becomes free
    Unname(lru_.front());
    ++evictions_;
  }
  const int32_t page = free_.back();
  free_.pop_back();
  info_[page].refs = 1;
  return page;
}

void PagedKvCache::Unname(int32_t page) {
  PageInfo& info = info_[page];
  if (const auto it = index_.find(info.hash); it != index_.end() && it->second == page) {
    index_.erase(it);
    NoteName(info.hash, false);
  }
  info.name = 0;
  if (info.refs == 0) {
    lru_.erase(info.lru);
    free_.push_back(page);
  }
}

absl::Status PagedKvCache::Reserve(PageTable& pages, int64_t n_tokens) {
  const int64_t needed = (n_tokens + options_.page_size - 1) / options_.page_size;
  if (needed - static_cast<int64_t>(pages.size()) > free_pages()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: ", n_tokens, " tokens need ", needed,
                                                     " pages, ", free_pages(), " free of ", total_pages_));
  }
  while (static_cast<int64_t>(pages.size()) < needed) pages.push_back(TakePage());
  return absl::OkStatus();
}

void PagedKvCache::Release(PageTable& pages) {
  for (auto it = pages.rbegin(); it != pages.rend(); ++it) {
    PageInfo& info = info_[*it];
    if (--info.refs > 0) continue;
    if (info.name != 0) info.lru = lru_.insert(lru_.end(), *it);
    else free_.push_back(*it);
  }
  pages.clear();
}

int64_t PagedKvCache::MatchPrefix(const std::vector<int32_t>& tokens, int64_t max_tokens, PageTable& pages,
                                  PrefixChain& chain) {
  const int64_t ps = options_.page_size;
  chain = PrefixChain{};
  if (!options_.prefix_caching) return 0;
  const int64_t limit = std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens.size()));
  while ((chain.pages + 1) * ps <= limit) {
    const int32_t* page_tokens = tokens.data() + chain.pages * ps;
    const uint64_t hash = options_.page_hash(chain.hash, page_tokens, ps);
    const auto it = index_.find(hash);
    if (it == index_.end()) break;
    PageInfo& info = info_[it->second];
    if (info.parent_name != chain.name ||
        !std::equal(page_tokens, page_tokens + ps, page_tokens_.begin() + it->second * ps)) {
      break;
    }
    if (info.refs++ == 0) lru_.erase(info.lru);
    pages.push_back(it->second);
    chain = PrefixChain{chain.pages + 1, hash, info.name};
  }
  return chain.pages * ps;
}

void PagedKvCache::Publish(const PageTable& pages, const std::vector<int32_t>& tokens, int64_t n_tokens,
                           PrefixChain& chain) {
  if (!options_.prefix_caching) return;
  const int64_t ps = options_.page_size;
  for (; (chain.pages + 1) * ps <= n_tokens; ++chain.pages) {
    const int32_t page = pages[chain.pages];
    const int32_t* page_tokens = tokens.data() + chain.pages * ps;
    const uint64_t hash = options_.page_hash(chain.hash, page_tokens, ps);
    const uint64_t parent_name = chain.name;
    chain.hash = hash;
    PageInfo& info = info_[page];
    if (info.name != 0) {  // matched from the cache
      chain.name = info.name;
      continue;
    }
    chain.name = 0;
    if (chain.pages > 0 && parent_name == 0) continue;  // no lookup could reach this page
    if (const auto it = index_.find(hash); it != index_.end()) {
      const int32_t other = it->second;
      if (info_[other].parent_name == parent_name &&
          std::equal(page_tokens, page_tokens + ps, page_tokens_.begin() + other * ps)) {
        // The same content is cached already: this copy goes with its sequence, and the pages
        // after it are named as that one's successors (their latents are the same bits).
        chain.name = info_[other].name;
        continue;
      }
      Unname(other);  // a stale entry (its parent was evicted) or a collision: the newer wins
    }
    info.name = next_name_++;
    info.hash = hash;
    info.parent_name = parent_name;
    std::copy(page_tokens, page_tokens + ps, page_tokens_.begin() + page * ps);
    index_[hash] = page;
    NoteName(hash, true);
    chain.name = info.name;
  }
}

void PagedKvCache::TakeNameChanges(std::vector<uint64_t>& removed, std::vector<uint64_t>& added) {
  removed.clear();
  added.clear();
  for (const auto& [hash, held] : name_changes_) (held ? added : removed).push_back(hash);
  name_changes_.clear();
}

uint8_t* PagedKvCache::Row(int32_t page, int64_t layer, int64_t slot) const {
  // Page layout: [layer][slot][row].
  return pool_ + page * page_bytes_ + static_cast<size_t>(layer * options_.page_size + slot) * row_bytes_;
}

namespace {

void ReadFp8Row(const uint8_t* row, int64_t rkv, int64_t dr, float* out) {
  const uint8_t* scales = row + rkv;
  for (int64_t b = 0; b * kKvFp8Block < rkv; ++b) {
    const int64_t begin = b * kKvFp8Block;
    float scale;
    std::memcpy(&scale, scales + 4 * b, 4);
    Fp8ToF32(row + begin, std::min(kKvFp8Block, rkv - begin), scale, out + begin);
  }
  bf16 pe[64];  // k_pe may sit unaligned after the scales: copied out, then widened
  for (int64_t i = 0; i < dr; i += 64) {
    const int64_t n = std::min<int64_t>(64, dr - i);
    std::memcpy(pe, scales + 4 * KvFp8Scales(rkv) + 2 * i, 2 * n);
    WidenBf16(pe, n, out + rkv + i);
  }
}

}  // namespace

void PagedKvCache::Write(const PageTable& pages, int64_t layer, int64_t pos, const float* latent) {
  uint8_t* row = Row(pages[pos / options_.page_size], layer, pos % options_.page_size);
  switch (options_.dtype) {
    case DType::kF32: std::memcpy(row, latent, dim_ * 4); break;
    case DType::kBF16: RoundBf16(latent, dim_, reinterpret_cast<bf16*>(row)); break;
    case DType::kF8E4M3: WriteKvRowFp8(latent, kv_lora_rank_, dim_ - kv_lora_rank_, row); break;
  }
}

template <typename Fn>
void PagedKvCache::ForEachRun(const PageTable& pages, int64_t layer, int64_t begin, int64_t n, Fn fn) const {
  for (int64_t pos = begin; pos < begin + n;) {
    const int64_t slot = pos % options_.page_size;
    const int64_t run = std::min(begin + n - pos, options_.page_size - slot);
    fn(static_cast<const uint8_t*>(Row(pages[pos / options_.page_size], layer, slot)), pos, run);
    pos += run;
  }
}

void PagedKvCache::Read(const PageTable& pages, int64_t layer, int64_t begin, int64_t n, float* out) const {
  ForEachRun(pages, layer, begin, n, [&](const uint8_t* row, int64_t pos, int64_t run) {
    float* dst = out + (pos - begin) * dim_;
    switch (options_.dtype) {
      case DType::kF32: std::memcpy(dst, row, run * dim_ * 4); break;
      case DType::kBF16: WidenBf16(reinterpret_cast<const bf16*>(row), run * dim_, dst); break;
      case DType::kF8E4M3:
        for (int64_t i = 0; i < run; ++i) ReadFp8Row(row + i * row_bytes_, kv_lora_rank_, dim_ - kv_lora_rank_, dst + i * dim_);
        break;
    }
  });
}

const bf16* PagedKvCache::RowsBf16(const PageTable& pages, int64_t layer, int64_t begin, int64_t n, bf16* scratch) const {
  const int64_t slot = begin % options_.page_size;
  if (slot + n <= options_.page_size) return reinterpret_cast<const bf16*>(Row(pages[begin / options_.page_size], layer, slot));
  for (int64_t pos = begin; pos < begin + n; ++pos)
    std::memcpy(scratch + (pos - begin) * dim_, Row(pages[pos / options_.page_size], layer, pos % options_.page_size),
                row_bytes_);
  return scratch;
}

void PagedKvCache::Warm(const PageTable& pages, int64_t layer, int64_t begin, int64_t n) const {
  constexpr size_t kLine = 64;
  uint64_t sum = 0;
  ForEachRun(pages, layer, begin, n, [&](const uint8_t* rows, int64_t, int64_t run) {
    for (size_t at = 0; at < static_cast<size_t>(run) * row_bytes_; at += kLine) sum += rows[at];
  });
  asm volatile("" : : "r"(sum));  // the loads are the point: keep them
}

std::vector<PagedKvCache::ByteRange> PagedKvCache::Ranges(const PageTable& pages, int64_t n_tokens) const {
  std::vector<ByteRange> out;
  const int64_t ps = options_.page_size;
  for (int64_t p = 0; p * ps < n_tokens && p < static_cast<int64_t>(pages.size()); ++p) {
    const size_t page = static_cast<size_t>(pages[p]) * page_bytes_;
    const int64_t filled = std::min(ps, n_tokens - p * ps);
    if (filled == ps) {
      out.push_back({page, page_bytes_});
      continue;
    }
    for (int64_t l = 0; l < layers_; ++l) {
      out.push_back({page + static_cast<size_t>(l * ps) * row_bytes_, static_cast<size_t>(filled) * row_bytes_});
    }
  }
  return out;
}

double PagedKvCache::BytesPerToken() const {
  return static_cast<double>(page_bytes_ + sizeof(int32_t)) / options_.page_size;
}

}  // namespace daedalus
