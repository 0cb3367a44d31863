// Sampling draws named by (seed, position): Philox4x32-10 against the Random123 known answers,
// a draw that does not depend on the draws before it, frequencies that follow the softmax of
// the logits under temperature, top-k and top-p, and greedy as argmax.
#include "worker/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/philox.h"

namespace daedalus {
namespace {

TEST(Philox, Random123KnownAnswers) {
  EXPECT_EQ(Philox4x32({0, 0, 0, 0}, {0, 0}), (std::array<uint32_t, 4>{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(Philox4x32({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
            (std::array<uint32_t, 4>{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(Philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
            (std::array<uint32_t, 4>{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

// Greedy decoding's argmax against a plain scan: ties (within and across its blocks) go to the
// lowest index, at any length, with infinities.
TEST(Sampler, ArgmaxIsTheFirstLargest) {
  auto plain = [](const std::vector<float>& v) {
    size_t best = 0;
    for (size_t i = 1; i < v.size(); ++i)
      if (v[i] > v[best]) best = i;
    return static_cast<int32_t>(best);
  };
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> value(-40, 40);  // few distinct values: many ties
  for (int64_t n : {1, 2, 255, 256, 257, 1000, 32000, 129280}) {
    for (int trial = 0; trial < 8; ++trial) {
      std::vector<float> v(n);
      for (float& x : v) x = static_cast<float>(value(rng)) * 0.25f;
      if (trial == 1) v[n - 1] = std::numeric_limits<float>::infinity();
      if (trial == 2) std::fill(v.begin(), v.end(), -std::numeric_limits<float>::infinity());
      if (trial == 3 && n > 300) v[257] = v[300] = 100.0f;  // tie across the block boundary
      EXPECT_EQ(Argmax(v.data(), n), plain(v)) << "n " << n << " trial " << trial;
    }
  }
}

TEST(Sampler, ADrawDependsOnTheSeedAndPositionAlone) {
  const std::vector<float> logits = {0.1f, 1.3f, -0.4f, 0.9f, 0.0f, 1.1f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 42;
  const Sampler a(p), b(p);
  std::vector<int32_t> forward, backward(200);
  for (int64_t pos = 0; pos < 200; ++pos) forward.push_back(a.Sample(logits.data(), 6, pos));
  for (int64_t pos = 199; pos >= 0; --pos) backward[pos] = b.Sample(logits.data(), 6, pos);
  EXPECT_EQ(forward, backward);  // in any order, from any sampler with the seed
  p.seed = 43;
  std::vector<int32_t> other;
  for (int64_t pos = 0; pos < 200; ++pos) other.push_back(Sampler(p).Sample(logits.data(), 6, pos));
  EXPECT_NE(forward, other);
}

// Frequencies over 40,000 positions against the exact distribution (4 standard deviations).
void ExpectFrequencies(const SamplingParams& p, const std::vector<float>& logits, const std::vector<double>& want) {
  const Sampler s(p);
  const int64_t n = 40000;
  std::vector<int64_t> count(logits.size(), 0);
  for (int64_t pos = 0; pos < n; ++pos) ++count[s.Sample(logits.data(), static_cast<int64_t>(logits.size()), pos)];
  for (size_t i = 0; i < want.size(); ++i) {
    const double sigma = std::sqrt(want[i] * (1 - want[i]) / n);
    EXPECT_NEAR(static_cast<double>(count[i]) / n, want[i], 4 * sigma + 1e-12) << "token " << i;
  }
}

TEST(Sampler, FrequenciesFollowTheTruncatedSoftmax) {
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, -1.0f};
  auto softmax = [&](double t, size_t keep) {
    std::vector<double> p(logits.size(), 0.0);
    double z = 0;
    for (size_t i = 0; i < keep; ++i) z += p[i] = std::exp(logits[i] / t);
    for (double& v : p) v /= z;
    return p;
  };
  SamplingParams p;
  p.seed = 7;
  p.temperature = 1.0f;
  ExpectFrequencies(p, logits, softmax(1.0, 4));
  p.temperature = 0.5f;
  ExpectFrequencies(p, logits, softmax(0.5, 4));
  p.temperature = 1.0f;
  p.top_k = 2;
  ExpectFrequencies(p, logits, softmax(1.0, 2));
  p.top_k = 0;
  p.top_p = 0.8f;  // the two most likely hold 0.61 + 0.22 = 0.83: the smallest set reaching 0.8
  ExpectFrequencies(p, logits, softmax(1.0, 2));
  p.temperature = 0.0f;
  EXPECT_EQ(Sampler(p).Sample(logits.data(), 4, 123), 0);
}

}  // namespace
}  // namespace daedalus
