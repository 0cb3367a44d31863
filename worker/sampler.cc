#include "worker/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/philox.h"

namespace daedalus {

// Blocks' maxima in vector registers, then the first index holding the largest: a vocabulary of
// 32K is a few microseconds rather than one dependent compare per entry. NaNs, which finite
// logits never hold, take the plain scan.
int32_t Argmax(const float* v, int64_t n) {
  constexpr int64_t kBlock = 256;
  float best = -std::numeric_limits<float>::infinity();
  int64_t best_block = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t i = b; i < e; ++i) m = std::max(m, v[i]);
    if (m > best) best = m, best_block = b;
  }
  for (int64_t i = best_block; i < std::min(n, best_block + kBlock); ++i)
    if (v[i] == best) return static_cast<int32_t>(i);
  int64_t first = 0;
  for (int64_t i = 1; i < n; ++i)
    if (v[i] > v[first]) first = i;
  return static_cast<int32_t>(first);
}

int32_t Sampler::Sample(const float* logits, int64_t vocab, int64_t position) const {
  if (params_.temperature <= 0.0f) return Argmax(logits, vocab);
  std::vector<int32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  auto more_likely = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  int64_t keep = vocab;
  if (params_.top_k > 0 && params_.top_k < vocab) keep = params_.top_k;
  std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(), more_likely);
  std::vector<double> p(keep);
  const double max = logits[ids[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += p[i] = std::exp((logits[ids[i]] - max) / params_.temperature);
  if (params_.top_p < 1.0f) {
    double mass = 0;
    int64_t n = 0;
    while (n < keep && mass < params_.top_p * sum) mass += p[n++];
    keep = std::max<int64_t>(n, 1);
    sum = mass;
  }
  const double u = PhiloxUniform(params_.seed, static_cast<uint64_t>(position)) * sum;  // uniform in [0, sum)
  double acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (u < acc) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace daedalus
