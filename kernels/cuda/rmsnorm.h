// RMSNorm on the GPU: y[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) * gamma (as RmsNorm in
// kernels/ops.h). One block per row; x and y may alias.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace daedalus::cuda {

struct RmsNormParams {
  const float* x = nullptr;      // [rows, x_stride], the first n of each row normalised
  const float* gamma = nullptr;  // [n]
  float* y = nullptr;            // [rows, y_stride]
  int64_t rows = 0;
  int64_t n = 0;
  int64_t x_stride = 0;
  int64_t y_stride = 0;
  float eps = 1e-6f;
};

absl::Status RmsNorm(const RmsNormParams& p, cudaStream_t stream);

}  // namespace daedalus::cuda
