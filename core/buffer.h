// Scratch buffers whose elements start uninitialised: resize() does not zero what the next
// kernel overwrites anyway (zeroing activation buffers cost ~6% of a decode step). 64-byte aligned.
#pragma once

#include <cstddef>
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
  // Cache-line aligned: the GEMM kernels stream whole aligned output rows past the caches.
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, std::size_t n) noexcept { ::operator delete(p, n * sizeof(T), std::align_val_t{64}); }
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

// A float vector for activations; `FloatBuffer(n, 0.0f)` still zeroes when asked.
using FloatBuffer = std::vector<float, DefaultInitAllocator<float>>;

}  // namespace daedalus
