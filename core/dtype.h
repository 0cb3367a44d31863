// Element types of checkpoints and caches: F32, BF16 and FP8 e4m3 (e4m3fn).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace daedalus {

enum class DType { kF32, kBF16, kF8E4M3 };

// The safetensors name: "F32", "BF16", "F8_E4M3".
const char* DTypeName(DType dtype);
absl::StatusOr<DType> ParseDType(const std::string& safetensors_name);
size_t DTypeSize(DType dtype);

using bf16 = uint16_t;  // raw bits: the upper half of an IEEE float32

inline float Bf16ToF32(bf16 v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline bf16 F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  // A select rather than a branch for NaN, so that loops over this vectorise.
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16, quiet = (bits >> 16) | 0x40u;
  return static_cast<bf16>((bits & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

// FP8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities;
// 0x7f/0xff are NaN; largest finite magnitude 448.
float Fp8E4M3ToF32(uint8_t code);
// Round to nearest even, saturating at ±448.
uint8_t F32ToFp8E4M3(float f);

void Bf16ToF32(const bf16* in, float* out, size_t n);
void F32ToBf16(const float* in, bf16* out, size_t n);

}  // namespace daedalus
