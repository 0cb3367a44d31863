// A row of the paged latent cache (core/kv_row.h) in device code. The pool is
// [page][layer][slot][row bytes], page ids from the host's PagedKvCache. Rows are bf16
// [kv_lora_rank + rope_dim], or kF8E4M3: kv_lora_rank e4m3 codes, one fp32 scale per 128
// codes, then k_pe in bf16 (rows are 2-byte aligned; the scales and k_pe may be no more).
#pragma once

#include "kernels/cuda/common.cuh"

namespace daedalus::cuda {

constexpr int kKvFp8Block = 128;

__host__ __device__ inline int64_t KvFp8Scales(int64_t rkv) { return (rkv + kKvFp8Block - 1) / kKvFp8Block; }
__host__ __device__ inline int64_t KvPeOffset(int64_t rkv) { return rkv + 4 * KvFp8Scales(rkv); }  // fp8 rows
__host__ __device__ inline int64_t KvRowBytes(int64_t rkv, int64_t dr, bool fp8) {
  return fp8 ? KvPeOffset(rkv) + 2 * dr : 2 * (rkv + dr);
}

__device__ __forceinline__ const uint8_t* KvRow(const void* pool, int64_t page, int64_t n_layers, int64_t layer,
                                                int64_t page_size, int64_t slot, int64_t row_bytes) {
  return static_cast<const uint8_t*>(pool) + ((page * n_layers + layer) * page_size + slot) * row_bytes;
}

// Scale b of an fp8 row (read as two halves: it may sit 2-byte aligned only).
__device__ __forceinline__ float KvFp8Scale(const uint8_t* row, int64_t rkv, int64_t b) {
  const auto* s = reinterpret_cast<const uint16_t*>(row + rkv + 4 * b);
  return __uint_as_float(static_cast<uint32_t>(s[0]) | static_cast<uint32_t>(s[1]) << 16);
}

// Element i as float, exactly: the bf16 value, or code · scale (as the CPU's Fp8ToF32).
__device__ __forceinline__ float KvRowValue(const uint8_t* row, int64_t i, int64_t rkv, bool fp8) {
  if (!fp8) return Bf16Bits(reinterpret_cast<const uint16_t*>(row)[i]);
  if (i < rkv) return Fp8Value(row[i]) * KvFp8Scale(row, rkv, i / kKvFp8Block);
  return Bf16Bits(reinterpret_cast<const uint16_t*>(row + KvPeOffset(rkv))[i - rkv]);
}

}  // namespace daedalus::cuda
