// Counts the kernels and memory copies the GPU runs between Start() and Stop(), through CUPTI's
// activity records. CUPTI is loaded at run time (libcupti.so.<CUDA major>, from the library
// path or the toolkit under /usr/local/cuda), so a machine without it runs the rest anyway:
// Start() then says why it cannot count.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace daedalus {

struct KernelCount {
  int64_t kernels = 0;
  int64_t copies = 0;  // memcpy and memset operations
};

class KernelCounter {
 public:
  absl::Status Start();
  // Synchronises the device, flushes CUPTI's records and returns what ran since Start().
  KernelCount Stop();
};

}  // namespace daedalus
