// The whole forward pass on the GPU (worker/cuda/gpu_model.h) against the CPU engine: the same
// requests through Engine on both, on the `tiny` preset (bf16, fp8, YaRN, V2-style routing)
// and on the `bench` preset: greedy tokens identical, prompt logits within a stated bound.
// Also expert parallelism's staging path over two local ranks. Skipped without a GPU.
#include <cmath>
#include <filesystem>
#include <thread>

#include "gtest/gtest.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/worker/test_models.h"
#include "worker/cuda/gpu_model.h"
#include "worker/device_backend.h"
#include "worker/engine.h"

namespace daedalus {
namespace {

// The CPU keeps activations in float throughout; the GPU rounds the routed experts' inputs and
// SiLU outputs to bf16 (everything else goes through split-bf16 GEMMs, ~2^-16). On logits of
// O(5), that is the size of the bf16-weight error the reference test allows (0.1).
constexpr double kLogitTol = 0.1;

std::vector<int32_t> Prompt(int64_t n, int32_t salt, int64_t vocab) {
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 37 + salt * 101 + 3) % vocab);
  return ids;
}

std::vector<Result> RunOn(const std::string& device, const ModelWeights& w, EngineOptions options,
                          const std::vector<Request>& requests) {
  auto backend = MakeDeviceBackend(DeviceOptions{device, 0.5}, w, options);
  EXPECT_TRUE(backend.ok()) << backend.status();
  if (!backend.ok()) return {};
  Engine engine(w, options);
  for (const Request& r : requests) EXPECT_TRUE(engine.Add(r).ok());
  auto results = engine.RunToCompletion();
  EXPECT_TRUE(engine.status().ok()) << engine.status();
  EXPECT_EQ(engine.cache().free_pages(), engine.cache().total_pages());
  return results;
}

void CompareCpuAndGpu(const ModelWeights& w, AttentionPath path = AttentionPath::kAuto) {
  const int64_t vocab = w.config.vocab_size;
  std::vector<Request> requests;
  for (int i = 0; i < 5; ++i) {
    Request r;
    r.prompt_ids = Prompt(3 + 29 * i, i, vocab);
    r.max_new_tokens = 8 + i;
    r.stop_at_eos = false;
    r.want_prompt_logits = true;
    requests.push_back(r);
  }
  EngineOptions options;
  options.attention = path;
  options.kv.page_size = 16;
  options.kv.max_tokens = 4096;
  options.prefill_chunk = 40;  // chunked prefill: slices that start mid-sequence
  const auto cpu = RunOn("cpu", w, options, requests);
  const auto gpu = RunOn("cuda:0", w, options, requests);
  ASSERT_EQ(cpu.size(), gpu.size());
  double worst = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_EQ(gpu[i].generated_ids, cpu[i].generated_ids) << "request " << i;
    ASSERT_EQ(gpu[i].prompt_logits.size(), cpu[i].prompt_logits.size());
    for (size_t t = 0; t < cpu[i].prompt_logits.size(); ++t)
      for (size_t v = 0; v < cpu[i].prompt_logits[t].size(); ++v)
        worst = std::max(worst, std::fabs(double(gpu[i].prompt_logits[t][v]) - cpu[i].prompt_logits[t][v]));
  }
  EXPECT_LT(worst, kLogitTol);
  std::printf("largest prompt-logit difference GPU vs CPU: %.5f\n", worst);
}

TEST(CudaModel, TinyBf16MatchesCpuEngine) {
  DAEDALUS_REQUIRE_GPU();
  CompareCpuAndGpu(testing::TinyModel(DType::kBF16));
}

TEST(CudaModel, TinyAbsorbedPrefillMatchesCpuEngine) {
  DAEDALUS_REQUIRE_GPU();
  CompareCpuAndGpu(testing::TinyModel(DType::kBF16), AttentionPath::kAbsorbed);
}

TEST(CudaModel, TinyYarnMatchesCpuEngine) {
  DAEDALUS_REQUIRE_GPU();
  CompareCpuAndGpu(testing::TinyModel(DType::kBF16, /*yarn=*/true));
}

TEST(CudaModel, TinyFp8MatchesCpuEngine) {
  DAEDALUS_REQUIRE_GPU();
  CompareCpuAndGpu(testing::TinyModel(DType::kF8E4M3));
}

const ModelWeights& MadeModel(const std::string& preset, DType dtype, const std::string& tweak) {
  static std::map<std::string, std::unique_ptr<ModelWeights>> cache;
  const std::string key = preset + DTypeName(dtype) + tweak;
  if (auto it = cache.find(key); it != cache.end()) return *it->second;
  const auto dir = std::filesystem::temp_directory_path() / ("daedalus-cuda-test-" + std::to_string(::getpid()) + key);
  auto config = PresetConfig(preset);
  EXPECT_TRUE(config.ok());
  if (tweak == "v2") {  // V2 routing: softmax scores, group max, no renormalisation
    config->scoring_func = "softmax";
    config->topk_method = "group_limited_greedy";
    config->norm_topk_prob = false;
    config->routed_scaling_factor = 16.0;
  }
  MakeModelOptions options;
  options.dtype = dtype;
  EXPECT_TRUE(MakeModel(*config, options, dir.string()).ok());
  auto weights = LoadModelWeights(dir.string());
  EXPECT_TRUE(weights.ok()) << weights.status();
  std::filesystem::remove_all(dir);
  return *(cache[key] = std::move(*weights));
}

TEST(CudaModel, TinyV2RoutingMatchesCpuEngine) {
  DAEDALUS_REQUIRE_GPU();
  CompareCpuAndGpu(MadeModel("tiny", DType::kBF16, "v2"));
}

TEST(CudaModel, BenchPresetMatchesCpuEngine) {
  DAEDALUS_REQUIRE_GPU();
  CompareCpuAndGpu(MadeModel("bench", DType::kBF16, ""));
}

// Expert parallelism on one GPU: two local ranks (threads), each with its own GpuModel and
// half the experts, route through the host exchange; tokens equal the single-process run.
TEST(CudaModel, ExpertParallelStagingMatchesSingleProcess) {
  DAEDALUS_REQUIRE_GPU();
  const ModelWeights& w = testing::TinyModel(DType::kBF16);
  const ModelConfig& c = w.config;
  std::vector<Request> requests;
  for (int i = 0; i < 2; ++i) {
    Request r;
    r.prompt_ids = Prompt(10 + 7 * i, i, c.vocab_size);
    r.max_new_tokens = 6;
    r.stop_at_eos = false;
    requests.push_back(r);
  }
  EngineOptions options;
  options.kv.page_size = 16;
  options.kv.max_tokens = 1024;
  const auto single = RunOn("cuda:0", w, options, {requests[0]});
  const auto single1 = RunOn("cuda:0", w, options, {requests[1]});
  auto transports = MakeLocalTransports(2);
  std::vector<Placement> placements(c.num_hidden_layers);
  for (auto& p : placements) {
    p.world_size = 2;
    p.replicas.assign(c.n_routed_experts, {});
    p.experts_on.assign(2, {});
    for (int32_t e = 0; e < c.n_routed_experts; ++e) {
      const int r = e % 2;
      p.replicas[e].push_back(r);
      p.experts_on[r].push_back(e);
    }
  }
  std::vector<std::vector<Result>> results(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank]() {
      EngineOptions o = options;
      o.transport = transports[rank].get();
      o.placements = &placements;
      auto backend = MakeDeviceBackend(DeviceOptions{"cuda:0", 0.3}, w, o);
      ASSERT_TRUE(backend.ok()) << backend.status();
      Engine engine(w, o);
      ASSERT_TRUE(engine.Add(requests[rank]).ok());
      results[rank] = engine.RunToCompletion();
      EXPECT_TRUE(engine.status().ok()) << engine.status();
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(results[0].size(), 1u);
  ASSERT_EQ(results[1].size(), 1u);
  EXPECT_EQ(results[0][0].generated_ids, single[0].generated_ids);
  EXPECT_EQ(results[1][0].generated_ids, single1[0].generated_ids);
}

TEST(CudaModel, DeviceFlagErrors) {
  ModelWeights w;
  EngineOptions options;
  EXPECT_FALSE(ParseDevice("gpu").ok());
  EXPECT_EQ(*ParseDevice("cuda:3"), 3);
  EXPECT_GE(*ParseDevice("cuda"), 0);  // the launcher's local rank, or 0
  auto cpu = MakeDeviceBackend(DeviceOptions{"cpu", 0.9}, w, options);
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ(cpu->get(), nullptr);
  EXPECT_FALSE(MakeDeviceBackend(DeviceOptions{"cuda:0", 1.5}, w, options).ok());
}

}  // namespace
}  // namespace daedalus
