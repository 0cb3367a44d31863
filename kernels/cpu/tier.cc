#include "kernels/cpu/tier.h"

namespace daedalus::cpu {

const TierKernels& Kernels() {
  switch (ActiveCpuIsa()) {
    case CpuIsa::kGeneric: return GenericKernels();
    case CpuIsa::kAvx2: return Avx2Kernels();
    case CpuIsa::kAvx512: return Avx512Kernels();
    case CpuIsa::kAvx512Bf16:
    case CpuIsa::kAmx: return Avx512Bf16Kernels();
  }
  return GenericKernels();
}

}  // namespace daedalus::cpu
