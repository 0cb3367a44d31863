// Scratch buffers whose elements start uninitialised: resize() does not zero what the next
// kernel overwrites anyway (zeroing activation buffers cost ~6% of a decode step).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>

namespace daedalus {

template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  DefaultInitAllocator() = default;
  // Buffers of 4 KB or more start on a cache line: the GEMM kernels stream whole aligned output
  // rows past the caches. (An aligned allocation costs ~40 ns more; small ones need none.)
  static constexpr std::size_t kAlignedBytes = 4096;
  T* allocate(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    return static_cast<T*>(bytes >= kAlignedBytes ? ::operator new(bytes, std::align_val_t{64}) : ::operator new(bytes));
  }
  void deallocate(T* p, std::size_t n) noexcept {
    const std::size_t bytes = n * sizeof(T);
    if (bytes >= kAlignedBytes) ::operator delete(p, bytes, std::align_val_t{64});
    else ::operator delete(p, bytes);
  }
  template <typename U>
  DefaultInitAllocator(const DefaultInitAllocator<U>&) noexcept {}
  // Value-initialisation (`resize(n)`) becomes default-initialisation: no zeroing.
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// A vector for activations; `FloatBuffer(n, 0.0f)` still zeroes when asked.
template <typename T>
using BufferOf = std::vector<T, DefaultInitAllocator<T>>;
using FloatBuffer = BufferOf<float>;

// b with room for at least n elements; its contents are not kept. A scratch buffer kept from call
// to call this way is faulted in once: a fresh one of a few MB comes from mmap (or from heap that
// malloc trimmed) each time, and the kernel zeroes every page of it first.
template <typename T>
BufferOf<T>& AtLeast(BufferOf<T>& b, int64_t n) {
  if (static_cast<int64_t>(b.size()) < n) {
    BufferOf<T>().swap(b);  // no copy of the old contents
    b.resize(static_cast<size_t>(n));
  }
  return b;
}

}  // namespace daedalus
