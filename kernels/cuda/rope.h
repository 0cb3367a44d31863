// Interleaved rotary embedding on the GPU (GPT-J / DeepSeek layout): rotates adjacent pairs
// (v[2i], v[2i+1]) of `heads` vectors per token by pos · inv_freq[i]. The angles are computed
// in double, cos/sin scaled by YaRN's mscale, then rounded to float: the same numbers as
// worker/rope.h's RopeTable::Angles. inv_freq already holds YaRN's blend when the config has one.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace daedalus::cuda {

struct RopeParams {
  float* v = nullptr;                 // token t, head h starts at v + t·token_stride + h·head_stride
  int64_t n_tokens = 0;
  int64_t heads = 1;
  int64_t token_stride = 0;           // floats
  int64_t head_stride = 0;            // floats
  int64_t dim = 0;                    // rotated elements per vector (qk_rope_head_dim), even
  const int32_t* positions = nullptr;  // [n_tokens] absolute positions (device)
  const double* inv_freq = nullptr;    // [dim / 2] (device)
  double mscale = 1.0;                 // YaRN cos/sin scale (1 for every published config)
};

absl::Status RotateInterleaved(const RopeParams& p, cudaStream_t stream);

}  // namespace daedalus::cuda
