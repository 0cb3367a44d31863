#include "core/kv_row.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace daedalus {

void WriteKvRowFp8(const float* latent, int64_t rkv, int64_t dr, uint8_t* row) {
  uint8_t* scales = row + rkv;
  for (int64_t b = 0; b * kKvFp8Block < rkv; ++b) {
    const int64_t begin = b * kKvFp8Block, end = std::min(rkv, begin + kKvFp8Block);
    float amax = 0;
    for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(latent[i]));
    const float scale = amax / 448.0f;
    for (int64_t i = begin; i < end; ++i) row[i] = scale > 0 ? F32ToFp8E4M3(latent[i] / scale) : 0;
    std::memcpy(scales + 4 * b, &scale, 4);
  }
  for (int64_t i = 0; i < dr; ++i) {  // k_pe may sit unaligned after the scales
    const bf16 v = F32ToBf16(latent[rkv + i]);
    std::memcpy(scales + 4 * KvFp8Scales(rkv) + 2 * i, &v, 2);
  }
}

}  // namespace daedalus
