// main() of the GPU test binaries: without a usable GPU the whole binary is skipped, saying why,
// with exit status 77, which ctest reports as Skipped (SKIP_RETURN_CODE), never as Passed.
#include <cstdio>
#include <string>

#include "gtest/gtest.h"
#include "kernels/cuda/device.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (absl::Status s = daedalus::cuda::DevicePresent(); !s.ok()) {
    std::printf("GPU tests skipped: %s\n", std::string(s.message()).c_str());
    return 77;
  }
  return RUN_ALL_TESTS();
}
