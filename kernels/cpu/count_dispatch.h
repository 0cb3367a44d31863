// A run-time count as a compile-time one, for kernels instantiated per head count: the tiers'
// attention kernels keep each head's accumulators in named registers, one instantiation per count.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

namespace daedalus::cpu {

// f(std::integral_constant<int, n>{}) for 1 <= n <= kMax.
template <int kMax, typename F>
__attribute__((always_inline)) inline void WithCount(int64_t n, F&& f) {
  [&]<int... K>(std::integer_sequence<int, K...>) __attribute__((always_inline)) {
    (void)((n == K + 1 ? (f(std::integral_constant<int, K + 1>{}), true) : false) || ...);
  }(std::make_integer_sequence<int, kMax>{});
}

}  // namespace daedalus::cpu
