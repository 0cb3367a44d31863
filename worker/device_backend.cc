#include "worker/device_backend.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#if DAEDALUS_HAVE_CUDA
#include "worker/cuda/cuda_backend.h"
#endif

namespace daedalus {

absl::StatusOr<int> ParseDevice(const std::string& device) {
  if (device == "cpu") return -1;
  int n = 0;
  if (absl::StartsWith(device, "cuda:") && absl::SimpleAtoi(device.substr(5), &n) && n >= 0) return n;
  if (device == "cuda") {  // one GPU per rank: the launcher's local rank
    for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK"}) {
      if (const char* v = std::getenv(var); v != nullptr && absl::SimpleAtoi(v, &n) && n >= 0) return n;
    }
    return 0;
  }
  return absl::InvalidArgumentError(absl::StrCat("--device ", device, ": expected cpu or cuda:N"));
}

absl::StatusOr<std::unique_ptr<Backend>> MakeDeviceBackend(const DeviceOptions& device,
                                                                  const ModelWeights& weights, EngineOptions& options) {
  auto index = ParseDevice(device.device);
  if (!index.ok()) return index.status();
  if (*index < 0) return std::unique_ptr<Backend>();
  if (!(device.gpu_memory_fraction > 0 && device.gpu_memory_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--gpu-memory-fraction ", device.gpu_memory_fraction, ": expected a fraction in (0, 1]"));
  }
#if DAEDALUS_HAVE_CUDA
  if (options.kv.dtype == DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat("--device ", device.device,
                                                   ": --kv-dtype f32: the GPU latent cache is bf16 or fp8 (--kv-dtype bf16|fp8)"));
  }
  CudaBackendOptions o;
  o.device = *index;
  o.memory_fraction = device.gpu_memory_fraction;
  o.page_size = options.kv.page_size;
  o.max_kv_tokens = options.kv.max_tokens;
  o.float_precision = device.gpu_float_precision;
  o.kv_fp8 = options.kv.dtype == DType::kF8E4M3;
  auto model = CudaBackend::Create(weights, o);
  if (!model.ok()) return absl::Status(model.status().code(), absl::StrCat("--device ", device.device, ": ", model.status().message()));
  options.kv.max_tokens = (*model)->kv_capacity_tokens();
  options.kv.host_pool = false;
  options.backend = model->get();
  return std::unique_ptr<Backend>(std::move(*model));
#else
  return absl::FailedPreconditionError(
      absl::StrCat("--device ", device.device, ": this daedalus was built without CUDA (no nvcc at build time)"));
#endif
}

}  // namespace daedalus
