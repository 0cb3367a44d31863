// Shared by the GPU tests: skipping (with the reason) where there is no GPU, and device
// arrays filled from and read back into host vectors.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device.h"

// In a TEST body: skips it, saying why, when no CUDA device is usable.
#define DAEDALUS_REQUIRE_GPU()                                                  \
  do {                                                                          \
    if (absl::Status s = ::daedalus::cuda::DevicePresent(); !s.ok()) {         \
      GTEST_SKIP() << "GPU test skipped: " << s.message();                      \
    }                                                                           \
  } while (0)

namespace daedalus::testing {

template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) { EXPECT_EQ(cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess); }
  explicit DeviceArray(const std::vector<T>& v) : DeviceArray(v.size()) { Upload(v); }
  ~DeviceArray() { cudaFree(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  void Upload(const std::vector<T>& v) {
    EXPECT_EQ(cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<T> Download() const {
    std::vector<T> v(n_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
  T* get() const { return static_cast<T*>(p_); }

 private:
  void* p_ = nullptr;
  size_t n_;
};

inline std::vector<float> RandomFloats(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

inline std::vector<bf16> ToBf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  F32ToBf16(v.data(), out.data(), v.size());
  return out;
}

inline std::vector<float> RoundedToBf16(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = Bf16ToF32(F32ToBf16(v[i]));
  return out;
}

// The largest |a - b| relative to the largest |b| (a scale-free error for a whole tensor).
inline double MaxRelError(const std::vector<float>& a, const std::vector<float>& b) {
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return err / scale;
}

// The largest MaxRelError over consecutive blocks of `block` values (one row and head of an
// attention output each), so that a small block is not measured against a large one's scale.
inline double MaxRelErrorPerBlock(const std::vector<float>& a, const std::vector<float>& b, size_t block) {
  double worst = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); i += block) {
    const size_t n = std::min({block, a.size() - i, b.size() - i});
    worst = std::max(worst, MaxRelError(std::vector<float>(a.begin() + i, a.begin() + i + n),
                                        std::vector<float>(b.begin() + i, b.begin() + i + n)));
  }
  return worst;
}

}  // namespace daedalus::testing
