// y = x · Wᵀ (or x · W) on the GPU for float activations and row-major BF16 weights, through
// cuBLAS (tensor cores, float accumulation), optionally batched with strides (per-head
// products of absorbed MLA).
//
// cuBLAS has no float × bf16 product, so the activations are rounded to bf16. With `split`
// (the default) each activation is written as hi + lo, both bf16, and both halves go through
// one GEMM of 2m rows that reads the weights once: the result then matches float activations
// to about 2^-16 relative, like the CPU path's, for twice the FLOPs (nothing extra in
// memory-bound decode). Without it activations carry bf16's 2^-9.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/device.h"

namespace daedalus::cuda {

struct LinearParams {
  // Row i of batch b of x is x + b·x_batch_stride + i·ldx, k floats.
  const float* x = nullptr;
  int64_t m = 0, k = 0, ldx = 0, x_batch_stride = 0;
  // bf16 bits. w_in_out false: W is [n, k] (the checkpoint's [out, in]) and y = x · Wᵀ;
  // true: W is [k, n] and y = x · W. Rows ldw elements apart.
  const uint16_t* w = nullptr;
  bool w_in_out = false;
  int64_t n = 0, ldw = 0, w_batch_stride = 0;
  // Row i of batch b of y is y + b·y_batch_stride + i·ldy, n floats (overwritten).
  float* y = nullptr;
  int64_t ldy = 0, y_batch_stride = 0;
  int64_t batch = 1;
  bool split = true;
};

// Scratch the products need; reused across calls.
struct LinearWorkspace {
  DeviceBuffer x_bf16, y_halves;
};

absl::Status Linear(cublasHandle_t cublas, const LinearParams& p, LinearWorkspace& ws, cudaStream_t stream);

// "cuBLAS: CUBLAS_STATUS_…" as an Internal error naming `what`.
absl::Status CublasError(cublasStatus_t s, const char* what);

}  // namespace daedalus::cuda
