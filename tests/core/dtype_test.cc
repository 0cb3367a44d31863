#include "core/dtype.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace daedalus {
namespace {

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  // 1 + 2^-8 lies exactly between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(F32ToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3·2^-8 lies between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up to even.
  EXPECT_EQ(F32ToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(Bf16ToF32(0xc000), -2.0f);
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::nanf("")))));
}

// The conversion (branch-free, so that its loops vectorise), one value and an array, against its
// definition for every upper half and a spread of lower halves: ties, carries into the exponent,
// infinities, NaNs, subnormals. Definition: a NaN keeps its upper half with the quiet bit set;
// anything else is rounded to its upper 16 bits, to nearest, ties to even.
TEST(Bf16, ConversionIsItsDefinitionForEveryUpperHalfScalarAndArray) {
  std::vector<float> in;
  std::vector<bf16> want;
  for (uint32_t high = 0; high < 0x10000; ++high)
    for (uint32_t low : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      const uint32_t bits = high << 16 | low;
      float f;
      std::memcpy(&f, &bits, 4);
      in.push_back(f);
      const bool up = low > 0x8000u || (low == 0x8000u && (high & 1u) != 0);
      want.push_back(static_cast<bf16>(std::isnan(f) ? high | 0x40u : high + (up ? 1u : 0u)));
    }
  std::vector<bf16> out(in.size());
  F32ToBf16(in.data(), out.data(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(F32ToBf16(in[i]), want[i]) << "input " << i;
    ASSERT_EQ(out[i], want[i]) << "input " << i;
  }
}

TEST(Fp8E4M3, DecodesKnownCodes) {
  EXPECT_EQ(Fp8E4M3ToF32(0x00), 0.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0x38), 1.0f);               // exponent 7 = bias
  EXPECT_EQ(Fp8E4M3ToF32(0x7e), 448.0f);             // largest finite
  EXPECT_EQ(Fp8E4M3ToF32(0xfe), -448.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(Fp8E4M3ToF32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_TRUE(std::isnan(Fp8E4M3ToF32(0x7f)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToF32(0xff)));
  EXPECT_EQ(Fp8E4M3ToF32(0x78), 256.0f);             // no infinities: 0x78 is finite
}

TEST(Fp8E4M3, EncodeInvertsDecodeAndRoundsToNearest) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;
    const float v = Fp8E4M3ToF32(static_cast<uint8_t>(code));
    if (v == 0.0f) continue;  // ±0 share a value
    EXPECT_EQ(F32ToFp8E4M3(v), code) << "code " << code;
  }
  EXPECT_EQ(F32ToFp8E4M3(1000.0f), 0x7e);  // saturates
  EXPECT_EQ(F32ToFp8E4M3(-1000.0f), 0xfe);
  // Between 1.0 (0x38) and 1.125 (0x39): 1.05 → 1.0, 1.1 → 1.125, 1.0625 is a tie → even 0x38.
  EXPECT_EQ(F32ToFp8E4M3(1.05f), 0x38);
  EXPECT_EQ(F32ToFp8E4M3(1.1f), 0x39);
  EXPECT_EQ(F32ToFp8E4M3(1.0625f), 0x38);
}

// Against the definition: the nearest of the 127 non-negative finite codes by value, ties to the
// even code, saturating at 448; over random magnitudes across the whole range and every midpoint.
uint8_t NearestCode(float f) {
  if (std::fabs(f) >= 448.0f) return (std::signbit(f) ? 0x80 : 0) | 0x7e;
  int best = 0;
  for (int c = 1; c <= 0x7e; ++c) {
    const double d = std::fabs(std::fabs(static_cast<double>(f)) - Fp8E4M3ToF32(static_cast<uint8_t>(c)));
    const double b = std::fabs(std::fabs(static_cast<double>(f)) - Fp8E4M3ToF32(static_cast<uint8_t>(best)));
    if (d < b || (d == b && (c & 1) == 0)) best = c;
  }
  return (std::signbit(f) ? 0x80 : 0) | best;
}

TEST(Fp8E4M3, EncodeIsTheNearestCodeTiesToEven) {
  std::vector<float> values;
  for (int c = 0; c < 0x7e; ++c) {
    const float lo = Fp8E4M3ToF32(static_cast<uint8_t>(c)), hi = Fp8E4M3ToF32(static_cast<uint8_t>(c + 1));
    values.insert(values.end(), {(lo + hi) / 2, std::nextafter((lo + hi) / 2, 0.0f), std::nextafter((lo + hi) / 2, 1e9f)});
  }
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> exponent(-14.0f, 9.5f);
  for (int i = 0; i < 20000; ++i) values.push_back(std::exp2(exponent(rng)));
  for (float v : values) {
    ASSERT_EQ(F32ToFp8E4M3(v), NearestCode(v)) << v;
    ASSERT_EQ(F32ToFp8E4M3(-v), NearestCode(-v)) << -v;
  }
}

}  // namespace
}  // namespace daedalus
