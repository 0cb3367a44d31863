// Host-side helpers shared by the CUDA kernels and their callers: error checking that turns
// CUDA, cuBLAS and NCCL failures into absl::Status, and whether a GPU is present.
// Includes only the CUDA runtime header, so plain C++ files may include it.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "absl/status/status.h"

namespace daedalus::cuda {

// OK with the number of devices, or why there is none usable (no driver, no device).
absl::Status DevicePresent();
// "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)" for device `device`.
std::string DeviceDescription(int device);
int SmCount(int device);
// The shared memory one block may opt into on the current device (cached per device).
int MaxSharedBytesPerBlock();

// `what` failed with `err`: Internal("<what>: <cudaGetErrorString>").
absl::Status CudaError(cudaError_t err, const char* what);

}  // namespace daedalus::cuda

// Returns an absl::Status from the enclosing function when a CUDA runtime call fails.
#define DAEDALUS_CUDA_RETURN(call)                                                              \
  do {                                                                                          \
    const cudaError_t daedalus_err_ = (call);                                                   \
    if (daedalus_err_ != cudaSuccess) return ::daedalus::cuda::CudaError(daedalus_err_, #call); \
  } while (0)

// The status of the last kernel launch (launch errors only; execution errors surface at the
// next synchronising call).
#define DAEDALUS_CUDA_LAUNCH_STATUS(name) ::daedalus::cuda::CudaError(cudaGetLastError(), name)

namespace daedalus::cuda {

// A device allocation that only grows (plain cudaMalloc; never managed memory). Growing waits
// for the device (cudaDeviceSynchronize) and frees the old block: size it once at start-up where
// it matters.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : data_(o.data_), bytes_(o.bytes_) { o.data_ = nullptr, o.bytes_ = 0; }
  ~DeviceBuffer();
  absl::Status Reserve(size_t bytes);
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace daedalus::cuda
