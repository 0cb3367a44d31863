// out[r, j] = silu(gu[r, j]) · gu[r, width + j] on the GPU: the gate and up halves of one
// fused gate/up GEMM output [rows, 2·width]. Writes float or bf16 (the next GEMM's input).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace daedalus::cuda {

struct SiluMulParams {
  const float* gate_up = nullptr;  // [rows, 2 · width]: gate then up
  int64_t rows = 0;
  int64_t width = 0;
  float* out_f32 = nullptr;        // [rows, width], or null
  uint16_t* out_bf16 = nullptr;    // [rows, width] bf16 bits, or null
  uint16_t* out_bf16_lo = nullptr; // with out_bf16: each value's rounding remainder, bf16, or null
};

absl::Status SiluMul(const SiluMulParams& p, cudaStream_t stream);

}  // namespace daedalus::cuda
