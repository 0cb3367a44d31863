// Turns a weight as the CPU path keeps it (kernels/linear.h: BF16 or FP8 e4m3 codes in the
// 32-row panel layout, or plain row-major F32) into row-major BF16 in device memory, which is
// what the GPU GEMMs read. FP8 codes are dequantized here by multiplying with their 128×128
// block scale (the GPU path keeps FP8 checkpoints as BF16: twice the bytes, cuBLAS speed).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace daedalus::cuda {

enum class WeightSource { kPanelBf16, kPanelFp8, kRowMajorF32, kRowMajorBf16 };

struct UnpackParams {
  WeightSource source = WeightSource::kPanelBf16;
  const void* in = nullptr;          // device copy of the weight as the CPU path holds it
  const float* scale_inv = nullptr;  // kPanelFp8: [ceil(rows/128), ceil(cols/128)] (device)
  int64_t rows = 0;
  int64_t cols = 0;
  uint16_t* out = nullptr;           // [rows, cols] bf16 bits
  int64_t out_stride = 0;            // elements between output rows (0: cols)
};

absl::Status UnpackWeight(const UnpackParams& p, cudaStream_t stream);

// In elements of `source`, what the CPU path stores for a [rows, cols] weight.
int64_t SourceElements(WeightSource source, int64_t rows, int64_t cols);

}  // namespace daedalus::cuda
