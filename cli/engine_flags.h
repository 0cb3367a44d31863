// Engine flags shared by `run`, `bench` and `worker`.
#pragma once

#include <algorithm>

#include "CLI/CLI.hpp"
#include "core/kv_row.h"
#include "worker/device_backend.h"
#include "worker/engine.h"

namespace daedalus {

struct EngineFlags {
  // Bounds that keep the pool's size in bytes well inside 64 bits (2^36 tokens of V3's 70 KB).
  static constexpr int64_t kMaxKvTokens = int64_t{1} << 36, kMaxKvMib = int64_t{1} << 30;
  std::string kv_dtype = "bf16", attention = "auto", prefix_caching = "on";
  int64_t kv_tokens = 1 << 16, kv_mib = 0, page_size = 64, max_batch_tokens = 512, prefill_chunk = 512;
  int threads = 0;
  std::string device = "cpu";
  double gpu_memory_fraction = 0.9;
  std::string gpu_precision = "fast";

  void Register(CLI::App& app) {
    app.add_option("--kv-dtype", kv_dtype,
                   "latent KV cache dtype: bf16 | f32 | fp8 (e4m3 latent with one scale per 128 values, bf16 k_pe)")
        ->check(CLI::IsMember({"bf16", "f32", "fp8"}));
    app.add_option("--kv-cache-tokens", kv_tokens, "KV cache capacity in tokens")
        ->check(CLI::Range(int64_t{1}, kMaxKvTokens));
    app.add_option("--kv-cache-mib", kv_mib,
                   "KV cache capacity as memory instead: as many tokens as fit in this many MiB in --kv-dtype's format")
        ->check(CLI::Range(int64_t{0}, kMaxKvMib));  // 0: --kv-cache-tokens decides
    app.add_option("--page-size", page_size, "KV cache page size in tokens")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
    app.add_option("--prefix-caching", prefix_caching,
                   "keep full KV pages after a request, named by their tokens, and reuse them for later prompts "
                   "with the same prefix: on | off")
        ->check(CLI::IsMember({"on", "off"}));
    app.add_option("--max-batch-tokens", max_batch_tokens, "tokens per forward step")
        ->check(CLI::Range(int64_t{1}, kMaxKvTokens));
    app.add_option("--prefill-chunk", prefill_chunk, "longest prefill slice of one sequence per step")
        ->check(CLI::Range(int64_t{1}, kMaxKvTokens));
    app.add_option("--attention", attention, "MLA form: auto (naive prefill, absorbed decode) | naive | absorbed")
        ->check(CLI::IsMember({"auto", "naive", "absorbed"}));
    app.add_option("--threads", threads, "threads (default: OMP_NUM_THREADS or all cores)")
        ->check(CLI::Range(0, 1 << 16));
    app.add_option("--device", device, "where the forward pass runs: cpu | cuda:N | cuda (GPU = this rank's local rank)");
    app.add_option("--gpu-memory-fraction", gpu_memory_fraction,
                   "with --device cuda:N: share of the GPU's memory for weights, scratch and the KV cache "
                   "(the KV pool gets what is left, capped by --kv-cache-tokens)");
    app.add_option("--gpu-precision", gpu_precision,
                   "with --device cuda:N: fast (the routed experts' activations in bf16, tensor-core MLA decode) or "
                   "float (every product at float precision, as the CPU's float tiers: bf16 hi + lo activations, "
                   "twice the expert GEMM work, CUDA-core decode)")
        ->check(CLI::IsMember({"fast", "float"}));
  }
  DeviceOptions Device() const { return DeviceOptions{device, gpu_memory_fraction, gpu_precision == "float"}; }
  DType KvDType() const { return kv_dtype == "f32" ? DType::kF32 : kv_dtype == "fp8" ? DType::kF8E4M3 : DType::kBF16; }
  // The engine's options; --kv-cache-mib needs the model's shape to become tokens.
  EngineOptions Options(const ModelConfig& config) const {
    EngineOptions o;
    o.kv.dtype = KvDType();
    o.kv.max_tokens = kv_tokens;
    o.kv.prefix_caching = prefix_caching == "on";
    if (kv_mib > 0) {
      const int64_t per_page = KvRowBytes(config, o.kv.dtype) * config.num_hidden_layers * page_size;
      o.kv.max_tokens = std::max<int64_t>(1, (kv_mib << 20) / per_page) * page_size;
    }
    o.kv.page_size = page_size;
    o.max_batch_tokens = max_batch_tokens;
    o.prefill_chunk = prefill_chunk;
    o.attention = attention == "naive" ? AttentionPath::kNaive
                  : attention == "absorbed" ? AttentionPath::kAbsorbed : AttentionPath::kAuto;
    return o;
  }
};

}  // namespace daedalus
