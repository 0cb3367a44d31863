// Next-token sampling: greedy, temperature, top-k, top-p, with a per-request seed.
// The same seed and logits give the same token on every machine (our own uniform draw).
#pragma once

#include <cstdint>
#include <random>

namespace daedalus {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  float top_p = 1.0f;        // keep the smallest set of most likely tokens whose mass reaches top_p
  int64_t top_k = 0;         // 0: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}
  int32_t Sample(const float* logits, int64_t vocab_size);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

int32_t Argmax(const float* v, int64_t n);

}  // namespace daedalus
