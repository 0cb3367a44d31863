#include "kernels/cuda/device.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace daedalus::cuda {

absl::Status CudaError(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

absl::Status DevicePresent() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" error for later calls
    return absl::UnavailableError(absl::StrCat("no CUDA device: cudaGetDeviceCount: ", cudaGetErrorString(err)));
  }
  if (n == 0) return absl::UnavailableError("no CUDA device: cudaGetDeviceCount returned 0");
  return absl::OkStatus();
}

std::string DeviceDescription(int device) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return absl::StrCat("CUDA device ", device, " (unknown)");
  return absl::StrFormat("%s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor, p.multiProcessorCount,
                         p.totalGlobalMem / 1073741824.0);
}

int SmCount(int device) {
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 1;
  return n;
}

int MaxSharedBytesPerBlock() {
  static std::atomic<int> cached[64];  // 0: not asked yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return 48 << 10;
  int n = cached[device].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) n = 48 << 10;
    cached[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

}  // namespace daedalus::cuda

namespace daedalus::cuda {

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) (void)cudaFree(data_);
}

absl::Status DeviceBuffer::Reserve(size_t bytes) {
  if (bytes <= bytes_) return absl::OkStatus();
  // Work queued on any stream may still read the old block: wait for it before freeing (cudaFree
  // is not documented to), which a buffer that only grows pays a few times in a process.
  if (data_ != nullptr) {
    DAEDALUS_CUDA_RETURN(cudaDeviceSynchronize());
    DAEDALUS_CUDA_RETURN(cudaFree(data_));
  }
  data_ = nullptr;
  bytes_ = 0;
  if (const cudaError_t err = cudaMalloc(&data_, bytes); err != cudaSuccess) {
    data_ = nullptr;
    return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc of ", bytes, " bytes: ", cudaGetErrorString(err)));
  }
  bytes_ = bytes;
  return absl::OkStatus();
}

}  // namespace daedalus::cuda
