#include "kernels/cpu/tier.h"

#include <atomic>

namespace daedalus::cpu {
namespace {
std::atomic<const TierKernels*> for_test{nullptr};
}  // namespace

const TierKernels& Kernels() {
  if (const TierKernels* t = for_test.load(std::memory_order_relaxed)) return *t;
  switch (ActiveCpuIsa()) {
    case CpuIsa::kGeneric: return GenericKernels();
    case CpuIsa::kAvx2: return Avx2Kernels();
    case CpuIsa::kAvx512: return Avx512Kernels();
    case CpuIsa::kAvx512Bf16: return Avx512Bf16Kernels();
    case CpuIsa::kAmx: return AmxKernels();
  }
  return GenericKernels();
}

ScopedKernelsForTest::ScopedKernelsForTest(const TierKernels* table) { for_test.store(table); }
ScopedKernelsForTest::~ScopedKernelsForTest() { for_test.store(nullptr); }

}  // namespace daedalus::cpu
