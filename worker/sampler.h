// Next-token sampling: greedy, temperature, top-k, top-p, with a per-request seed. The draw for
// the token at position p depends on (seed, p) alone (core/philox.h), not on the draws before
// it: the same seed and logits give the same token on every machine, and a sequence computed
// again from its tokens (preempted, or moved to another worker) continues exactly as it would have.
#pragma once

#include <cstdint>

namespace daedalus {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  float top_p = 1.0f;        // keep the smallest set of most likely tokens whose mass reaches top_p
  int64_t top_k = 0;         // 0: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params) {}
  // The token at `position` (the sequence's length before it) from that position's logits.
  int32_t Sample(const float* logits, int64_t vocab_size, int64_t position) const;

 private:
  SamplingParams params_;
};

// The index of the largest of v[0, n), the lowest one on ties.
int32_t Argmax(const float* v, int64_t n);

}  // namespace daedalus
