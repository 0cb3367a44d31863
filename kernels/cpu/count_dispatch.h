// A run-time count as a compile-time one, for kernels instantiated per count: the tiers'
// attention kernels keep each head's accumulators in named registers, and their panel kernels
// each token's, one instantiation per count.
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

// Pick{}(std::integral_constant<int, n>{})(arg) for 1 <= n <= kMax, through a table of the kMax
// functions Pick (a lambda without captures) names: one indirect call, each instantiation a
// function of its own (where WithCount inlines them all into its caller). The table's type is
// local to Pick's, so no instantiation here is shared with another tier's translation unit.
template <int kMax, typename Pick, typename Arg>
void CallWithCount(int n, Pick, const Arg& arg) {
  using Fn = decltype(Pick{}(std::integral_constant<int, 1>{}));
  struct Table {
    Fn fn[kMax];
  };
  static constexpr Table table = []<int... K>(std::integer_sequence<int, K...>) {
    return Table{{Pick{}(std::integral_constant<int, K + 1>{})...}};
  }(std::make_integer_sequence<int, kMax>{});
  table.fn[n - 1](arg);
}

}  // namespace daedalus::cpu
