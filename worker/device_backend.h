// Choosing where the forward pass runs: `--device cpu` (the engine's own CpuBackend) or
// `--device cuda:N` (worker/cuda/cuda_backend.h). Callable whether or not the build has CUDA.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/engine.h"
#include "worker/weights.h"

namespace daedalus {

struct DeviceOptions {
  std::string device = "cpu";        // "cpu" or "cuda:N"
  double gpu_memory_fraction = 0.9;  // of the GPU's memory for weights, scratch and the KV pool
  // CudaBackendOptions::float_precision: every product at float precision, as the CPU's float
  // tiers, rather than bf16 expert activations and tensor-core decode.
  bool gpu_float_precision = false;
};

// -1 for "cpu", N for "cuda:N", the launcher's local rank (or 0) for "cuda"; InvalidArgument
// otherwise.
absl::StatusOr<int> ParseDevice(const std::string& device);

// For "cuda:N": uploads `weights` to GPU N, sizes its latent KV pool from the memory left
// under gpu_memory_fraction (capped by options.kv.max_tokens), and points options.backend and
// options.kv (page bookkeeping only) at it. For "cpu": null, options untouched. An error names
// the device and why (no GPU, not built with CUDA, out of memory, unsupported option).
absl::StatusOr<std::unique_ptr<Backend>> MakeDeviceBackend(const DeviceOptions& device,
                                                                  const ModelWeights& weights, EngineOptions& options);

}  // namespace daedalus
