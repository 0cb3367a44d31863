// The paged latent KV cache: per token and layer it holds RMSNorm(c_kv) [kv_lora_rank] then
// the rotated k_pe [qk_rope_head_dim] — nothing per head — in the row format of core/kv_row.h
// (f32, bf16, or FP8 codes with per-128 scales and a bf16 k_pe). A page holds `page_size`
// tokens of every layer; a sequence owns a list of pages. Not thread-safe: the step loop owns it.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "core/dtype.h"
#include "core/model_config.h"
#include "core/prefix_hash.h"

namespace daedalus {

struct KvCacheOptions {
  DType dtype = DType::kBF16;  // kBF16 (default), kF32 or kF8E4M3
  int64_t page_size = 64;      // tokens per page
  int64_t max_tokens = 1 << 16;  // capacity, rounded up to whole pages
  // false: page bookkeeping only, the latents live elsewhere (a GPU backend); Write and Read
  // must not be called.
  bool host_pool = true;
  // The host pool's memory when the caller owns it (registered for KV transfer, and kept across
  // engines): at least PoolBytes long. Null: allocated here.
  uint8_t* pool = nullptr;
  // Full pages stay cached after their sequence ends, named by content (core/prefix_hash.h),
  // for later sequences with the same prefix; evicted least recently used when the pool needs
  // room.
  bool prefix_caching = false;
  // Records the content names the cache begins or stops holding, for TakeNameChanges (a worker
  // reports them to the coordinator, which routes by prefix).
  bool log_names = false;
  // The page-naming function (tests give a colliding one).
  uint64_t (*page_hash)(uint64_t parent, const int32_t* tokens, int64_t n) = PageHash;
};

class PagedKvCache {
 public:
  PagedKvCache(const ModelConfig& config, const KvCacheOptions& options);
  // Bytes of the host pool for `options` (pages rounded up).
  static size_t PoolBytes(const ModelConfig& config, const KvCacheOptions& options);
  // Writes each 4 KB page of a fresh host pool once, over the threads: the pool's memory is then
  // committed before any request instead of page by page inside decode steps (kv_cache.cc).
  static void Commit(uint8_t* pool, size_t bytes);
  // RESOURCE_EXHAUSTED, naming the pool's size and the memory available (core/host_memory.h),
  // where a host pool allocated here would not fit: committed up front, it would otherwise be
  // found by the kernel's OOM killer, or fail to allocate at all. `sharing` processes of this
  // node check at once, before any commits its pool (ranks under mpirun or srun): each gets that
  // share of the memory available (0 and 1: all of it).
  static absl::Status CheckFits(const ModelConfig& config, const KvCacheOptions& options, int sharing = 1);

  using PageTable = std::vector<int32_t>;

  // Grows `pages` so that it covers `n_tokens` positions, taking free pages first, then evicting
  // unreferenced cached ones; ResourceExhausted when that is not enough.
  absl::Status Reserve(PageTable& pages, int64_t n_tokens);
  // Drops this table's reference to each of its pages: a page nobody references returns to the
  // free list, or, when it is named, stays cached until evicted.
  void Release(PageTable& pages);

  // Prefix caching. A sequence's chain: how many of its whole pages were offered for naming,
  // the content name of the last, and the name of the cached page holding that content (its
  // own or an identical one; 0: none).
  struct PrefixChain {
    int64_t pages = 0;
    uint64_t hash = kRootPageHash;
    uint64_t name = 0;
  };
  // Fills the empty `pages` with referenced cached pages holding the longest prefix of `tokens`
  // made of whole pages, at most `max_tokens` tokens; returns the tokens they hold (0 when
  // prefix caching is off). A hit is confirmed by the page's token ids and by its parent being
  // the page matched before it, so a hash collision cannot serve another prefix's latents.
  int64_t MatchPrefix(const std::vector<int32_t>& tokens, int64_t max_tokens, PageTable& pages, PrefixChain& chain);
  // Names the whole pages among the first `n_tokens` of `tokens` (their latents written) that
  // the chain has not named yet, so later sequences can share them. A page whose content is
  // already cached under another page stays unnamed (freed with its sequence).
  void Publish(const PageTable& pages, const std::vector<int32_t>& tokens, int64_t n_tokens, PrefixChain& chain);

  // Stores one token's latent (kv_lora_rank + qk_rope_head_dim floats) at `pos`, rounded to the
  // cache's dtype (FP8: each block of 128 latent values scaled so that its largest maps to 448).
  void Write(const PageTable& pages, int64_t layer, int64_t pos, const float* latent);
  // Reads positions [begin, begin + n) of `layer` as float rows into out [n, dim], decoding the
  // stored rows in place (callers read a few rows at a time, never the whole context).
  void Read(const PageTable& pages, int64_t layer, int64_t begin, int64_t n, float* out) const;
  void Read(const PageTable& pages, int64_t layer, int64_t n, float* out) const { Read(pages, layer, 0, n, out); }
  // A bf16 cache's positions [begin, begin + n) of `layer` as bf16 rows dim() apart: in place
  // when they lie in one page, else copied into `scratch` [n, dim].
  const bf16* RowsBf16(const PageTable& pages, int64_t layer, int64_t begin, int64_t n, bf16* scratch) const;
  // Loads one byte of each cache line of positions [begin, begin + n) of `layer`, in address
  // order, and nothing else: a plain stream the CPU's prefetchers follow at full speed, so that a
  // Read or RowsBf16 of those rows soon after finds them in cache.
  void Warm(const PageTable& pages, int64_t layer, int64_t begin, int64_t n) const;

  // Where the latents of positions [0, n_tokens) of `pages` lie in the host pool, as byte
  // ranges from its start, in page order: a whole page is one range, a partial last page one
  // per layer. Their lengths sum to n_tokens × layers × row bytes — what a KV transfer moves.
  struct ByteRange {
    size_t offset = 0, bytes = 0;
  };
  std::vector<ByteRange> Ranges(const PageTable& pages, int64_t n_tokens) const;
  uint8_t* pool() { return pool_; }  // null without a host pool

  bool prefix_caching() const { return options_.prefix_caching; }
  // The content name of a full page holding tokens[0, page_size) after the page named `parent`.
  uint64_t PageName(uint64_t parent, const int32_t* tokens) const {
    return options_.page_hash(parent, tokens, options_.page_size);
  }

  int64_t dim() const { return dim_; }
  DType dtype() const { return options_.dtype; }
  int64_t page_size() const { return options_.page_size; }
  int64_t row_bytes() const { return static_cast<int64_t>(row_bytes_); }  // one token's latent in one layer
  // Pages Reserve can hand out: free ones plus unreferenced cached ones.
  int64_t free_pages() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  int64_t total_pages() const { return total_pages_; }
  int64_t cached_pages() const { return static_cast<int64_t>(index_.size()); }  // named pages
  int64_t evictions() const { return evictions_; }  // cached pages reclaimed for new content
  // With log_names: the content names dropped and those taken since the previous call (a name
  // dropped and taken again appears once, as it stands now).
  void TakeNameChanges(std::vector<uint64_t>& removed, std::vector<uint64_t>& added);
  // Bytes of cache one token occupies in a full page, over all layers (the page table's
  // 4 bytes per page included).
  double BytesPerToken() const;

 private:
  uint8_t* Row(int32_t page, int64_t layer, int64_t slot) const;
  // fn(rows, pos, run) for each run of positions [begin, begin + n) of `layer` that lie in one
  // page: `run` rows from `rows`, the first at position `pos` (defined in kv_cache.cc).
  template <typename Fn>
  void ForEachRun(const PageTable& pages, int64_t layer, int64_t begin, int64_t n, Fn fn) const;

  struct PageInfo {
    int32_t refs = 0;
    uint64_t name = 0;         // 0: unnamed; else unique over the cache's life (never reused)
    uint64_t hash = 0;         // content name, when named
    uint64_t parent_name = 0;  // `name` of the page before it when it was named (0: first page)
    std::list<int32_t>::iterator lru;  // when named and unreferenced
  };
  int32_t TakePage();
  void Unname(int32_t page);  // drops the page's name; unreferenced, it becomes free
  void NoteName(uint64_t hash, bool held) {
    if (options_.log_names) name_changes_[hash] = held;
  }

  KvCacheOptions options_;
  int64_t layers_, dim_, kv_lora_rank_, total_pages_;
  size_t row_bytes_, page_bytes_;
  std::unique_ptr<uint8_t[]> owned_pool_;  // uninitialised: pages are committed when first written
  uint8_t* pool_ = nullptr;                 // owned_pool_, or the caller's
  std::vector<int32_t> free_;
  std::vector<PageInfo> info_;              // by page
  std::vector<int32_t> page_tokens_;        // [page][page_size] token ids of named pages
  std::unordered_map<uint64_t, int32_t> index_;  // content name -> named page
  std::list<int32_t> lru_;                  // named, unreferenced pages, least recently used first
  std::unordered_map<uint64_t, bool> name_changes_;  // content name -> held now (log_names)
  uint64_t next_name_ = 1;
  int64_t evictions_ = 0;
};

}  // namespace daedalus
