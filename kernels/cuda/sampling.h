// Greedy sampling on the GPU: the argmax of each logits row, lowest id on ties (as
// worker/sampler.h's Argmax). Temperature, top-k and top-p sampling stay on the host
// (worker/sampler.h), which reads the logits row it is given.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace daedalus::cuda {

struct ArgmaxParams {
  const float* logits = nullptr;  // [rows, vocab]
  int64_t rows = 0;
  int64_t vocab = 0;
  int32_t* out = nullptr;         // [rows]
};

absl::Status Argmax(const ArgmaxParams& p, cudaStream_t stream);

}  // namespace daedalus::cuda
