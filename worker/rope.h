// Rotary embedding angles for q_pe and k_pe, with YaRN when the config's rope_scaling says so
// (applied at every position, as the Hugging Face code does).
#pragma once

#include <cstdint>
#include <vector>

#include "core/model_config.h"

namespace daedalus {

class RopeTable {
 public:
  explicit RopeTable(const ModelConfig& config);
  int64_t pairs() const { return static_cast<int64_t>(inv_freq_.size()); }
  // cos and sin [pairs] for absolute position `pos`, YaRN's cos/sin mscale included.
  void Angles(int64_t pos, float* cos, float* sin) const;
  // The frequencies (YaRN's blend included) and the cos/sin scale, for other devices.
  const std::vector<double>& inv_freq() const { return inv_freq_; }
  double mscale() const { return mscale_; }

 private:
  std::vector<double> inv_freq_;
  double mscale_ = 1.0;
};

}  // namespace daedalus
