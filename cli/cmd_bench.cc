// `daedalus bench`: prefill and decode speed, KV cache bytes, peak memory, and the decode
// roofline implied by this machine's measured memory bandwidth, printed beside the stated
// baseline (llama.cpp on the same machine kind, 2 threads, bf16: 77 tok/s decode, 567 tok/s
// prefill of 512 tokens).
// GCC 12 warns falsely inside its own _mm512_reduce_add_ps.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "cli/request_io.h"
#include "worker/engine.h"
#include "worker/presets.h"

namespace daedalus {
namespace {

constexpr double kLlamaCppDecode = 77.0, kLlamaCppPrefill = 567.0;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Read bandwidth of all threads streaming a buffer far larger than the caches (best of runs):
// wide loads into independent accumulators, as a GEMV reads its weights.
double MeasureBandwidth() {
  const size_t n = size_t{1} << 28;  // 1 GiB of floats
  std::unique_ptr<float[]> buf(new float[n]);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) buf[i] = static_cast<float>(i & 1023);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    float total = 0;
    const double t0 = Now();
#pragma omp parallel reduction(+ : total)
    {
      const size_t threads = omp_get_num_threads(), t = omp_get_thread_num();
      const size_t begin = n / threads * t / 64 * 64, end = t + 1 == threads ? n : n / threads * (t + 1) / 64 * 64;
#if defined(__AVX512F__)
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (size_t i = begin; i < end; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(buf.get() + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(buf.get() + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(buf.get() + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(buf.get() + i + 48));
      }
      total += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#else
      float acc[8] = {};
      for (size_t i = begin; i < end; i += 8)
        for (int j = 0; j < 8; ++j) acc[j] += buf[i + j];
      for (float v : acc) total += v;
#endif
    }
    const double dt = Now() - t0;
    if (total == -1.0f) std::printf(" ");  // keeps the loads
    best = std::max(best, n * sizeof(float) / dt);
  }
  return best;
}

// Multiply-add throughput of all threads on independent register chains (0 without AVX-512).
double MeasureFmaPeak() {
#if defined(__AVX512F__)
  const int64_t iters = 20000000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    float total = 0;
    const double t0 = Now();
#pragma omp parallel reduction(+ : total)
    {
      __m512 a[12];
      for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(0.001f * i);
      const __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(0.0001f);
      for (int64_t i = 0; i < iters; ++i)
        for (int j = 0; j < 12; ++j) a[j] = _mm512_fmadd_ps(a[j], b, c);
      for (int i = 0; i < 12; ++i) total += _mm512_reduce_add_ps(a[i]);
    }
    const double dt = Now() - t0;
    if (total == -1.0f) std::printf(" ");
    best = std::max(best, omp_get_max_threads() * iters * 12 * 32.0 / dt);
  }
  return best;
#else
  return 0;
#endif
}

std::vector<int32_t> RandomPrompt(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = static_cast<int32_t>(rng() % vocab);
  return ids;
}

// Prefill tokens/s of one prompt (best of `reps`).
double PrefillRate(const ModelWeights& w, const EngineOptions& options, int64_t prompt_len, int reps) {
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    Engine engine(w, options);
    Request r;
    r.prompt_ids = RandomPrompt(prompt_len, w.config.vocab_size, rep + 1);
    r.max_new_tokens = 0;
    (void)engine.Add(r);
    const double t0 = Now();
    engine.RunToCompletion();
    best = std::max(best, prompt_len / (Now() - t0));
  }
  return best;
}

// Decode tokens/s with `batch` sequences generating together (prefills excluded from timing).
double DecodeRate(const ModelWeights& w, const EngineOptions& options, int64_t batch, int64_t context, int64_t steps) {
  Engine engine(w, options);
  for (int64_t b = 0; b < batch; ++b) {
    Request r;
    r.prompt_ids = RandomPrompt(context, w.config.vocab_size, 100 + b);
    r.max_new_tokens = steps + 2;
    r.stop_at_eos = false;
    (void)engine.Add(r);
  }
  // Run until every sequence decodes, then time `steps` decode-only steps.
  while (engine.Step() && engine.last_step().prefill_tokens > 0) {
  }
  int64_t tokens = 0;
  const double t0 = Now();
  for (int64_t s = 0; s < steps && engine.Step(); ++s) tokens += engine.last_step().decode_tokens;
  return tokens / (Now() - t0);
}

double PeakRssMiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

const char* Verdict(bool ok) { return ok ? "met" : "NOT met"; }

}  // namespace

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, flags, model = "unknown CPU";
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0 && model == "unknown CPU") model = line.substr(line.find(':') + 2);
    if (line.rfind("flags", 0) == 0 && flags.empty()) flags = line;
  }
  std::vector<std::string> have;
  for (const char* f : {"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    if (flags.find(std::string(" ") + f) != std::string::npos) have.push_back(f);
  return absl::StrCat(model, " [", absl::StrJoin(have, " "), "]");
}


Command AddBenchCommand(CLI::App& app) {
  struct Flags {
    std::string model, batches = "1,8,64";
    int64_t prompt_len = 512, context = 64, steps = 32;
    int reps = 3;
    EngineFlags engine;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--model", f->model, "checkpoint directory")->required();
  app.add_option("--prompt-len", f->prompt_len, "prefill prompt length");
  app.add_option("--batches", f->batches, "decode batch sizes, comma-separated");
  app.add_option("--context", f->context, "prompt length before decode is timed");
  app.add_option("--steps", f->steps, "decode steps timed per batch size");
  app.add_option("--reps", f->reps, "prefill repetitions (best is reported)");
  f->engine.Register(app);
  return [f]() {
    SetThreads(f->engine.threads);
    auto batches = ParseIdList(f->batches);
    if (!batches.ok() || batches->empty()) return Fail("--batches: expected comma-separated batch sizes");
    auto loaded = LoadModelWeights(f->model);
    if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
    const ModelWeights& w = **loaded;
    const ModelConfig& c = w.config;
    EngineOptions options = f->engine.Options();
    const int64_t max_batch = *std::max_element(batches->begin(), batches->end());
    options.max_running = std::max<int64_t>(options.max_running, max_batch);
    options.kv.max_tokens = std::max<int64_t>(options.kv.max_tokens,
                                              std::max(f->prompt_len, max_batch * (f->context + f->steps + 2 + options.kv.page_size)));
    // --device cuda:N: every engine below runs its steps on the GPU (one after another).
    auto backend = MakeDeviceBackend(f->engine.Device(), w, options);
    if (!backend.ok()) return Fail(std::string(backend.status().message()));
    if (*backend) std::printf("device: %s\n", f->engine.device.c_str());

    // The llama.cpp baseline was measured on the bench preset in bf16: compare only with that.
    auto bench = PresetConfig("bench");
    const bool baseline_applies = bench.ok() && w.projection_dtype() == DType::kBF16 && c.hidden_size == bench->hidden_size &&
                                  c.num_hidden_layers == bench->num_hidden_layers &&
                                  c.n_routed_experts == bench->n_routed_experts && c.vocab_size == bench->vocab_size;

    const double prefill = PrefillRate(w, options, f->prompt_len, f->reps);
    std::vector<double> decode;
    for (int32_t b : *batches) decode.push_back(DecodeRate(w, options, b, f->context, f->steps));
    const double peak_rss = PeakRssMiB();  // before the probes below allocate their buffers
    const double bandwidth = MeasureBandwidth();
    const double roofline = bandwidth / static_cast<double>(w.ActiveBytesPerToken());
    const double fma_peak = MeasureFmaPeak();
    // Multiply-adds of a prefill token: every active projection but lm_head (only the last row
    // of a prompt needs logits), two FLOPs per weight.
    const double prefill_flops = 2.0 * static_cast<double>(w.ActiveParametersPerToken() - w.lm_head.rows * w.lm_head.cols);

    std::printf("machine: %s, %d threads\n", CpuModel().c_str(), omp_get_max_threads());
    std::printf("model: %s (hidden %lld, %lld layers, %lld experts top-%lld), weights %s, %.1f MiB total, "
                "%.1f MiB active per token\n",
                f->model.c_str(), static_cast<long long>(c.hidden_size), static_cast<long long>(c.num_hidden_layers),
                static_cast<long long>(c.n_routed_experts), static_cast<long long>(c.num_experts_per_tok),
                DTypeName(w.projection_dtype()), w.TotalBytes() / 1048576.0, w.ActiveBytesPerToken() / 1048576.0);
    std::printf("memory bandwidth (read, all threads): %.1f GB/s -> batch-1 decode roofline %.1f tok/s\n",
                bandwidth / 1e9, roofline);
    if (fma_peak > 0) std::printf("float FMA peak (all threads): %.1f GFLOP/s\n", fma_peak / 1e9);
    std::printf("prefill %lld tokens: %.1f tok/s, %.1f GFLOP/s in projections", static_cast<long long>(f->prompt_len),
                prefill, prefill * prefill_flops / 1e9);
    if (fma_peak > 0) std::printf(" (%.0f%% of FMA peak)", 100 * prefill * prefill_flops / fma_peak);
    if (baseline_applies) std::printf("; %.2fx llama.cpp %.0f", prefill / kLlamaCppPrefill, kLlamaCppPrefill);
    std::printf("\n");
    double decode1 = 0, decode64 = 0;
    for (size_t i = 0; i < batches->size(); ++i) {
      const int32_t b = (*batches)[i];
      const double rate = decode[i];
      if (b == 1) decode1 = rate;
      if (b == 64) decode64 = rate;
      std::printf("decode batch %3d: %8.1f tok/s", b, rate);
      if (b == 1) {
        std::printf(" (%.0f%% of roofline", 100 * rate / roofline);
        if (baseline_applies) std::printf("; %.2fx llama.cpp %.0f", rate / kLlamaCppDecode, kLlamaCppDecode);
        std::printf(")");
      } else if (decode1 > 0) {
        std::printf(" (%.1fx batch 1)", rate / decode1);
      }
      std::printf("\n");
    }
    Engine probe(w, options);
    const double formula = static_cast<double>(c.kv_cache_dim() * c.num_hidden_layers * DTypeSize(options.kv.dtype));
    std::printf("KV cache: %.1f bytes/token (latent formula %.0f, paging overhead %.2f%%, page %lld tokens)\n",
                probe.cache().BytesPerToken(), formula, 100 * (probe.cache().BytesPerToken() / formula - 1),
                static_cast<long long>(options.kv.page_size));
    std::printf("peak resident memory: %.1f MiB\n", peak_rss);
    if (baseline_applies && decode1 > 0) {
      std::printf("targets: batch-1 decode >= 92 tok/s: %s; >= 70%% of roofline: %s; prefill >= 1100 tok/s: %s",
                  Verdict(decode1 >= 92), Verdict(decode1 >= 0.7 * roofline), Verdict(prefill >= 1100));
      if (decode64 > 0) std::printf("; batch-64 >= 8x batch-1: %s", Verdict(decode64 >= 8 * decode1));
      std::printf("\n");
    }
    return 0;
  };
}

}  // namespace daedalus
