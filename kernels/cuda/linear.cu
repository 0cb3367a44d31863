#include "kernels/cuda/common.cuh"
#include "kernels/cuda/linear.h"

#include "absl/strings/str_cat.h"

namespace daedalus::cuda {
namespace {

// x (strided) → xs [batch][rows][k] bf16, rows = m (hi only) or 2m (hi, then lo).
__global__ void SplitKernel(LinearParams p, uint16_t* xs, int64_t rows) {
  const int64_t n = p.batch * p.m * p.k;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / (p.m * p.k), r = (i / p.k) % p.m, c = i % p.k;
    const float v = p.x[b * p.x_batch_stride + r * p.ldx + c];
    const uint16_t hi = ToBf16Bits(v);
    uint16_t* out = xs + b * rows * p.k;
    out[r * p.k + c] = hi;
    if (rows > p.m) out[(p.m + r) * p.k + c] = ToBf16Bits(v - Bf16Bits(hi));
  }
}

// y (strided) = halves[b][i] + halves[b][m + i].
__global__ void AddHalvesKernel(LinearParams p, const float* halves) {
  const int64_t n = p.batch * p.m * p.n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / (p.m * p.n), r = (i / p.n) % p.m, c = i % p.n;
    const float* h = halves + b * 2 * p.m * p.n;
    p.y[b * p.y_batch_stride + r * p.ldy + c] = h[r * p.n + c] + h[(p.m + r) * p.n + c];
  }
}

int Blocks(int64_t n) { return static_cast<int>(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536); }

}  // namespace

absl::Status CublasError(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": cuBLAS ", cublasGetStatusName(s), ": ", cublasGetStatusString(s)));
}

absl::Status Linear(cublasHandle_t cublas, const LinearParams& p, LinearWorkspace& ws, cudaStream_t stream) {
  if (p.m == 0 || p.n == 0 || p.batch == 0) return absl::OkStatus();
  const int64_t rows = p.split ? 2 * p.m : p.m;
  if (absl::Status s = ws.x_bf16.Reserve(static_cast<size_t>(p.batch * rows * p.k) * 2); !s.ok()) return s;
  if (p.split) {
    if (absl::Status s = ws.y_halves.Reserve(static_cast<size_t>(p.batch * rows * p.n) * 4); !s.ok()) return s;
  }
  SplitKernel<<<Blocks(p.batch * p.m * p.k), 256, 0, stream>>>(p, ws.x_bf16.as<uint16_t>(), rows);
  if (absl::Status s = DAEDALUS_CUDA_LAUNCH_STATUS("Linear: SplitKernel"); !s.ok()) return s;
  if (absl::Status s = CublasError(cublasSetStream(cublas, stream), "cublasSetStream"); !s.ok()) return s;
  // Column-major view: y'[n, rows] = op(W') [n, k] · x'[k, rows].
  const float alpha = 1.0f, beta = 0.0f;
  float* c = p.split ? ws.y_halves.as<float>() : p.y;
  const int64_t ldc = p.split ? p.n : p.ldy, stride_c = p.split ? rows * p.n : p.y_batch_stride;
  const cublasOperation_t op_w = p.w_in_out ? CUBLAS_OP_N : CUBLAS_OP_T;
  const cublasStatus_t st = cublasGemmStridedBatchedEx(
      cublas, op_w, CUBLAS_OP_N, static_cast<int>(p.n), static_cast<int>(rows), static_cast<int>(p.k), &alpha, p.w,
      CUDA_R_16BF, static_cast<int>(p.ldw), p.w_batch_stride, ws.x_bf16.data(), CUDA_R_16BF, static_cast<int>(p.k),
      rows * p.k, &beta, c, CUDA_R_32F, static_cast<int>(ldc), stride_c, static_cast<int>(p.batch),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (absl::Status s = CublasError(st, "Linear: cublasGemmStridedBatchedEx"); !s.ok()) return s;
  if (p.split) {
    AddHalvesKernel<<<Blocks(p.batch * p.m * p.n), 256, 0, stream>>>(p, ws.y_halves.as<float>());
    if (absl::Status s = DAEDALUS_CUDA_LAUNCH_STATUS("Linear: AddHalvesKernel"); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace daedalus::cuda
