#include "core/dtype.h"

#include <array>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace daedalus {

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kBF16: return "BF16";
    case DType::kF8E4M3: return "F8_E4M3";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(const std::string& name) {
  if (name == "F32") return DType::kF32;
  if (name == "BF16") return DType::kBF16;
  if (name == "F8_E4M3") return DType::kF8E4M3;
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported dtype \"", name, "\" (expected F32, BF16 or F8_E4M3)"));
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF8E4M3: return 1;
  }
  return 0;
}

namespace {

float DecodeE4M3(uint8_t code) {
  const int sign = code >> 7;
  const int exponent = (code >> 3) & 0xf;
  const int mantissa = code & 0x7;
  if (exponent == 0xf && mantissa == 0x7) return std::nanf("");
  float magnitude = exponent == 0 ? std::ldexp(mantissa / 8.0f, -6)
                                  : std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
  return sign ? -magnitude : magnitude;
}

const std::array<float, 256>& E4M3Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = DecodeE4M3(static_cast<uint8_t>(i));
    return t;
  }();
  return table;
}

}  // namespace

float Fp8E4M3ToF32(uint8_t code) { return E4M3Table()[code]; }

uint8_t F32ToFp8E4M3(float f) {
  if (std::isnan(f)) return 0x7f;
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const auto sign = static_cast<uint8_t>(bits >> 24 & 0x80);
  bits &= 0x7fffffffu;
  float a;
  std::memcpy(&a, &bits, 4);
  if (a >= 448.0f) return sign | 0x7e;
  // Subnormal range: multiples of 2^-9, ties to even (8 is the smallest normal's code).
  if (a < 0x1p-6f) return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
  // Normal: the float's mantissa rounded to 3 bits (ties to even), its exponent rebiased from
  // 127 to 7. Below 448 the result is at most 448 (0x7e).
  bits += 0x7ffffu + (bits >> 20 & 1u);
  return sign | static_cast<uint8_t>(((bits >> 23) - 120) << 3 | (bits >> 20 & 7));
}

void Bf16ToF32(const bf16* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = Bf16ToF32(in[i]);
}

void F32ToBf16(const float* in, bf16* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = F32ToBf16(in[i]);
}

}  // namespace daedalus
