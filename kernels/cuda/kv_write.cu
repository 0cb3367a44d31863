#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kv_row.cuh"
#include "kernels/cuda/kv_write.h"

namespace daedalus::cuda {
namespace {

constexpr int kThreads = kKvFp8Block;  // one latent value of a scale block per thread

// core/dtype.h's F32ToFp8E4M3, bit for bit: saturating, ties to even, NaN to 0x7f.
__device__ __forceinline__ uint8_t ToFp8E4M3(float f) {
  if (isnan(f)) return 0x7f;
  uint32_t bits = __float_as_uint(f);
  const auto sign = static_cast<uint8_t>(bits >> 24 & 0x80);
  bits &= 0x7fffffffu;
  const float a = __uint_as_float(bits);
  if (a >= 448.0f) return sign | 0x7e;
  if (a < 0x1p-6f) return sign | static_cast<uint8_t>(rintf(a * 512.0f));
  bits += 0x7ffffu + (bits >> 20 & 1u);
  return sign | static_cast<uint8_t>(((bits >> 23) - 120) << 3 | (bits >> 20 & 7));
}

__global__ void __launch_bounds__(kThreads) KvWriteKernel(KvWriteParams p) {
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x, rkv = p.kv_lora_rank, dim = rkv + p.rope_dim;
  const int64_t row_bytes = KvRowBytes(rkv, p.rope_dim, p.fp8);
  uint8_t* row = static_cast<uint8_t*>(p.pool) +
                 ((static_cast<int64_t>(p.pages[t]) * p.n_layers + p.layer) * p.page_size + p.slots[t]) * row_bytes;
  const float* in = p.latent + t * p.latent_stride;
  if (!p.fp8) {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) reinterpret_cast<uint16_t*>(row)[i] = ToBf16Bits(in[i]);
    return;
  }
  for (int64_t b = 0; b < KvFp8Scales(rkv); ++b) {
    const int64_t i = b * kKvFp8Block + threadIdx.x;
    const float v = i < rkv ? in[i] : 0.0f;
    const float scale = BlockMax(fabsf(v), scratch) / 448.0f;
    if (i < rkv) row[i] = scale > 0 ? ToFp8E4M3(v / scale) : 0;
    if (threadIdx.x < 2) {  // the scale, as two halves (rows are 2-byte aligned)
      reinterpret_cast<uint16_t*>(row + rkv + 4 * b)[threadIdx.x] =
          static_cast<uint16_t>(__float_as_uint(scale) >> (16 * threadIdx.x));
    }
  }
  auto* pe = reinterpret_cast<uint16_t*>(row + KvPeOffset(rkv));
  for (int64_t i = threadIdx.x; i < p.rope_dim; i += blockDim.x) pe[i] = ToBf16Bits(in[rkv + i]);
}

}  // namespace

absl::Status KvWrite(const KvWriteParams& p, cudaStream_t stream) {
  if (p.n_tokens == 0) return absl::OkStatus();
  KvWriteKernel<<<static_cast<unsigned>(p.n_tokens), kThreads, 0, stream>>>(p);
  return DAEDALUS_CUDA_LAUNCH_STATUS("KvWrite");
}

}  // namespace daedalus::cuda
