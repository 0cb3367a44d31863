#include "worker/rope.h"

#include <algorithm>
#include <cmath>

namespace daedalus {
RopeTable::RopeTable(const ModelConfig& c) {
  const int64_t dim = c.qk_rope_head_dim;
  const double base = c.rope_theta;
  inv_freq_.resize(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) inv_freq_[i] = 1.0 / std::pow(base, static_cast<double>(2 * i) / dim);
  if (!c.rope_scaling) return;
  const RopeScaling& y = *c.rope_scaling;
  // The dimension at which a rotation makes `rotations` turns over the original context.
  auto correction_dim = [&](double rotations) {
    return dim * std::log(y.original_max_position_embeddings / (rotations * 2 * M_PI)) / (2 * std::log(base));
  };
  const double low = std::max(std::floor(correction_dim(y.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(y.beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    inv_freq_[i] = inv_freq_[i] * (1 - ramp) + inv_freq_[i] / y.factor * ramp;
  }
  mscale_ = YarnMscale(y.factor, y.mscale) / YarnMscale(y.factor, y.mscale_all_dim);
}

void RopeTable::Angles(int64_t pos, float* cos, float* sin) const {
  for (size_t i = 0; i < inv_freq_.size(); ++i) {
    const double angle = static_cast<double>(pos) * inv_freq_[i];
    cos[i] = static_cast<float>(std::cos(angle) * mscale_);
    sin[i] = static_cast<float>(std::sin(angle) * mscale_);
  }
}

}  // namespace daedalus
