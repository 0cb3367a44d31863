#include "core/weight_memory.h"

#include <gnu/libc-version.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <utility>

namespace daedalus {
namespace {

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
// Buffers are carved from blocks of this size; one larger than a quarter of it gets a block of
// its own (whose last huge page may hold less than 2 MB).
constexpr size_t kBlockBytes = size_t{64} << 20;
constexpr size_t kAlign = 64;

uintptr_t RoundUp(uintptr_t v, uintptr_t to) { return (v + to - 1) / to * to; }
uintptr_t RoundDown(uintptr_t v, uintptr_t to) { return v / to * to; }

}  // namespace

int HugePagesTunable() {
  // glibc reads the tunable from 2.35 on; earlier ones ignore it.
  int major = 0, minor = 0;
  if (std::sscanf(gnu_get_libc_version(), "%d.%d", &major, &minor) != 2 || major * 1000 + minor < 2035) return 0;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables == nullptr) return 0;
  // The last setting wins, as in glibc's parser: "name=value" entries separated by ':'.
  const std::string all = tunables, key = std::string(kHugePagesTunable) + "=";
  int value = 0;
  for (size_t at = 0; at <= all.size();) {
    const size_t end = std::min(all.find(':', at), all.size());
    if (all.compare(at, key.size(), key) == 0) {
      value = std::atoi(all.substr(at + key.size(), end - at - key.size()).c_str());
    }
    at = end + 1;
  }
  return value;
}

bool HugePagesAsked() { return HugePagesTunable() != 0; }

struct WeightBuffer::Block {
  uint8_t* base;
  size_t bytes;
  ~Block() { munmap(base, bytes); }
};

namespace {

// A 2 MB-aligned anonymous mapping of `bytes` (rounded up to whole huge pages), advised for
// huge pages (when asked for) while nothing in it is touched yet: the kernel then backs it with
// them at the first write (where its transparent huge pages are not off).
std::shared_ptr<WeightBuffer::Block> MapBlock(size_t bytes) {
  bytes = RoundUp(bytes, kHugePage);
  void* p = mmap(nullptr, bytes + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  const auto start = reinterpret_cast<uintptr_t>(p), base = RoundUp(start, kHugePage);
  if (base > start) munmap(p, base - start);
  if (start + kHugePage > base) munmap(reinterpret_cast<void*>(base + bytes), start + kHugePage - base);
  if (HugePagesAsked()) madvise(reinterpret_cast<void*>(base), bytes, MADV_HUGEPAGE);
  return std::shared_ptr<WeightBuffer::Block>(new WeightBuffer::Block{reinterpret_cast<uint8_t*>(base), bytes});
}

std::mutex carving;
std::shared_ptr<WeightBuffer::Block> current;  // the block buffers are carved from now
size_t used = 0;                               // its bytes carved so far

}  // namespace

WeightBuffer::WeightBuffer(size_t bytes) : size_(bytes) {
  const size_t need = RoundUp(bytes > 0 ? bytes : 1, kAlign);
  if (need > kBlockBytes / 4) {
    block_ = MapBlock(need);
    data_ = block_->base;
    return;
  }
  std::lock_guard<std::mutex> lock(carving);
  if (current == nullptr || used + need > current->bytes) {
    current = MapBlock(kBlockBytes);
    used = 0;
  }
  block_ = current;
  data_ = current->base + used;
  used += need;
}

WeightBuffer::WeightBuffer(WeightBuffer&& other) noexcept
    : block_(std::move(other.block_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

WeightBuffer& WeightBuffer::operator=(WeightBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    block_ = std::move(other.block_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

WeightBuffer::~WeightBuffer() { Release(); }

// The whole huge pages inside the buffer go back to the kernel now; the rest of the block,
// shared with other buffers, when the last of them goes.
void WeightBuffer::Release() {
  if (block_ == nullptr) return;
  const auto begin = RoundUp(reinterpret_cast<uintptr_t>(data_), kHugePage),
             end = RoundDown(reinterpret_cast<uintptr_t>(data_) + size_, kHugePage);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  block_.reset();
  data_ = nullptr;
  size_ = 0;
}

}  // namespace daedalus
