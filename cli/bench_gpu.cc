// daedalus-bench-gpu: the GPU path's figures, each beside a limit measured in the same process
// on the device it ran on.
//  - Limits (`peak`): a bf16 matrix product through cuBLAS (8192³, fp32 accumulation), the
//    tensor peak; a device-to-device copy, the memory bandwidth (bytes read plus written).
//  - MLA decode (`mla`): DeepSeek-V3's attention shapes (128 heads, kv_lora_rank 512, rope 64)
//    at batch × context; about 240 FLOP per byte of latent, so compute-bound at batch 64:
//    TFLOP/s against the tensor peak and GB/s against the copy bandwidth.
//  - Grouped expert GEMM (`experts`): the routed experts' FFN at DeepSeek-V3's shapes (hidden
//    7168, moe_intermediate 2048, 256 experts, top-8) for several token counts, in both forms
//    (one grouped cuBLAS call; a loop of GEMMs), beside dense cuBLAS GEMMs of the same work.
//  - End-to-end decode (`e2e`): tokens/s of a checkpoint (--model, e.g. the `bench` preset) at
//    several batch sizes on the GPU, beside the CPU engine.
// --only picks parts, so that a device check runs each in its own process.
// A program, not a test: it prints figures and targets, and asserts nothing.
#include <cuda_runtime.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <set>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/kernel_counter.h"
#include "core/kv_row.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/mla_decode.h"
#include "worker/device_backend.h"
#include "worker/engine.h"

namespace daedalus {
namespace {

#define CHECK_OK(expr)                                                                          \
  do {                                                                                          \
    const absl::Status s_ = (expr);                                                             \
    if (!s_.ok()) {                                                                             \
      std::fprintf(stderr, "daedalus-bench-gpu: %s:%d: %s\n", __FILE__, __LINE__, s_.ToString().c_str()); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Seconds per call of `fn` on `stream` (after warm-up), by CUDA events over `reps` calls.
template <typename Fn>
double TimeIt(cudaStream_t stream, int reps, Fn fn) {
  for (int i = 0; i < 2; ++i) CHECK_OK(fn());
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, stream);
  for (int i = 0; i < reps; ++i) CHECK_OK(fn());
  cudaEventRecord(stop, stream);
  CHECK_OK(cuda::CudaError(cudaEventSynchronize(stop), "cudaEventSynchronize"));
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / 1e3 / reps;
}

// The limits the figures are set against, measured here.
struct Limits {
  double tensor_flops = 0;  // bf16 matrix product, fp32 accumulation
  double copy_bytes = 0;    // device-to-device copy, bytes read plus written per second
};

Limits MeasureLimits(cublasHandle_t cublas, cudaStream_t stream) {
  Limits l;
  const int64_t n = 8192;
  cuda::DeviceBuffer a, b, c;
  CHECK_OK(a.Reserve(static_cast<size_t>(n * n) * 2));
  CHECK_OK(b.Reserve(static_cast<size_t>(n * n) * 2));
  CHECK_OK(c.Reserve(static_cast<size_t>(n * n) * 2));
  // Random bf16 of magnitude 2^-7 to 2^-6 and either sign (zeros would run faster than data).
  std::vector<uint16_t> host(static_cast<size_t>(n * n));
  std::mt19937 rng(5);
  for (auto& v : host) v = static_cast<uint16_t>(0x3c00 | (rng() & 0x80ff));
  cudaMemcpy(a.data(), host.data(), a.bytes(), cudaMemcpyHostToDevice);
  cudaMemcpy(b.data(), host.data(), b.bytes(), cudaMemcpyHostToDevice);
  cublasSetStream(cublas, stream);
  const float one = 1, zero = 0;
  const double t_mm = TimeIt(stream, 10, [&] {
    return cuda::CublasError(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, a.data(), CUDA_R_16BF, n, b.data(),
                                          CUDA_R_16BF, n, &zero, c.data(), CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT),
                             "cublasGemmEx");
  });
  l.tensor_flops = 2.0 * n * n * n / t_mm;
  const size_t bytes = size_t{1} << 31;
  cuda::DeviceBuffer src, dst;
  CHECK_OK(src.Reserve(bytes));
  CHECK_OK(dst.Reserve(bytes));
  cudaMemset(src.data(), 1, bytes);
  const double t_copy = TimeIt(stream, 10, [&] {
    return cuda::CudaError(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync");
  });
  l.copy_bytes = 2.0 * bytes / t_copy;
  std::printf("limits measured here: bf16 matrix product (cuBLAS, 8192^3) %.1f TFLOP/s; device-to-device copy %.0f GB/s "
              "(read + write)\n",
              l.tensor_flops / 1e12, l.copy_bytes / 1e9);
  std::fflush(stdout);
  return l;
}

void BenchMlaDecode(int device, cudaStream_t stream, int64_t batch, int64_t context, const Limits& limits,
                    cuda::MlaDecodeKernel kernel, bool fp8) {
  const int64_t H = 128, rkv = 512, dr = 64, dim = rkv + dr, page = 64;
  const int64_t row_bytes = KvRowBytes(rkv, dr, fp8 ? DType::kF8E4M3 : DType::kBF16);
  const int64_t pages_per_seq = (context + page - 1) / page, pages = batch * pages_per_seq;
  cuda::DeviceBuffer pool, q_lat, q_pe, out, table, lens, ws;
  CHECK_OK(pool.Reserve(static_cast<size_t>(pages * page * row_bytes)));
  CHECK_OK(q_lat.Reserve(static_cast<size_t>(batch * H * rkv) * 4));
  CHECK_OK(q_pe.Reserve(static_cast<size_t>(batch * H * dr) * 4));
  CHECK_OK(out.Reserve(static_cast<size_t>(batch * H * rkv) * 4));
  cudaMemset(pool.data(), 0x3c, pool.bytes());  // finite everywhere: bf16 0x3c3c ≈ 0.0115, e4m3 0x3c = 1.5
  cudaMemset(q_lat.data(), 0, q_lat.bytes());
  cudaMemset(q_pe.data(), 0, q_pe.bytes());
  // Each sequence's pages scattered over the pool (a shuffled page table).
  std::vector<int32_t> ids(pages), len(batch, static_cast<int32_t>(context));
  for (int64_t i = 0; i < pages; ++i) ids[i] = static_cast<int32_t>(i);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(1));
  CHECK_OK(table.Reserve(ids.size() * 4));
  CHECK_OK(lens.Reserve(len.size() * 4));
  cudaMemcpy(table.data(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(lens.data(), len.data(), len.size() * 4, cudaMemcpyHostToDevice);
  const cuda::MlaDecodePlan plan = cuda::PlanMlaDecode(batch, H, rkv, dr, context, fp8, cuda::SmCount(device), kernel);
  if (plan.kernel != kernel) return;  // not for these shapes and dtype
  CHECK_OK(ws.Reserve(std::max<size_t>(plan.workspace_bytes, 4)));
  cuda::MlaDecodeParams p;
  p.q_latent = q_lat.as<float>(), p.q_pe = q_pe.as<float>(), p.q_pe_row_stride = H * dr, p.q_pe_head_stride = dr;
  p.pool = pool.data(), p.kv_fp8 = fp8, p.layer = 0, p.n_layers = 1, p.page_size = page;
  p.page_table = table.as<int32_t>(), p.max_pages = pages_per_seq, p.kv_len = lens.as<int32_t>();
  p.n_rows = batch, p.heads = H, p.kv_lora_rank = rkv, p.rope_dim = dr, p.scale = 0.1f, p.out = out.as<float>();
  p.workspace = ws.data();
  const double t = TimeIt(stream, 10, [&] { return cuda::MlaDecode(p, plan, stream); });
  const double bytes = static_cast<double>(batch * context * row_bytes);
  const double flops = 2.0 * batch * context * H * (dim + rkv);
  const bool target = batch == 64 && context == 4096;
  const double share = flops / t / limits.tensor_flops;
  std::printf("MLA decode [%-10s %s] batch %3lld x context %5lld (V3: 128 heads, rank 512, rope 64): %8.1f us, %6.1f TFLOP/s = "
              "%5.1f%% of the tensor peak, %7.1f GB/s of latent = %5.1f%% of the copy bandwidth, %d split%s%s\n",
              cuda::MlaDecodeKernelName(kernel), fp8 ? "fp8 " : "bf16", static_cast<long long>(batch),
              static_cast<long long>(context), t * 1e6, flops / t / 1e12, 100 * share, bytes / t / 1e9,
              100 * bytes / t / limits.copy_bytes, plan.n_splits, plan.n_splits > 1 ? "s" : "",
              target ? (share >= 0.6 ? "  [target >= 60% of tensor peak: met]" : "  [target >= 60% of tensor peak: NOT met]") : "");
  std::fflush(stdout);
}

void BenchExperts(cublasHandle_t cublas, cudaStream_t stream, const std::vector<int64_t>& token_counts, const Limits& limits) {
  const int64_t D = 7168, I = 2048, E = 256, K = 8;
  cuda::DeviceBuffer w_gu, w_down;
  CHECK_OK(w_gu.Reserve(static_cast<size_t>(E * 2 * I * D) * 2));
  CHECK_OK(w_down.Reserve(static_cast<size_t>(E * D * I) * 2));
  cudaMemset(w_gu.data(), 0, w_gu.bytes());
  cudaMemset(w_down.data(), 0, w_down.bytes());
  std::vector<const uint16_t*> gu(E), down(E);
  for (int64_t e = 0; e < E; ++e) {
    gu[e] = w_gu.as<uint16_t>() + e * 2 * I * D;
    down[e] = w_down.as<uint16_t>() + e * D * I;
  }
  double dense_4096 = 0, grouped_4096 = 0;
  for (int64_t T : token_counts) {
    // Each token picks K distinct experts uniformly: the group sizes of balanced routing.
    std::mt19937 rng(T);
    std::vector<int64_t> count(E, 0);
    std::vector<int32_t> all(E);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t e = 0; e < E; ++e) all[e] = static_cast<int32_t>(e);
      for (int64_t k = 0; k < K; ++k) {
        std::swap(all[k], all[k + rng() % (E - k)]);
        ++count[all[k]];
      }
    }
    std::vector<int64_t> begin(E + 1, 0);
    for (int64_t e = 0; e < E; ++e) begin[e + 1] = begin[e] + count[e];
    const int64_t rows = T * K;
    cuda::DeviceBuffer x, y;
    CHECK_OK(x.Reserve(static_cast<size_t>(rows * D) * 2));
    CHECK_OK(y.Reserve(static_cast<size_t>(rows * D) * 4));
    cudaMemset(x.data(), 0, x.bytes());
    cuda::ExpertFfnWorkspace ws;
    cuda::ExpertFfnParams p;
    p.x = x.as<uint16_t>(), p.group_begin = begin.data(), p.n_experts = E, p.w_gate_up = gu.data(), p.w_down = down.data();
    p.hidden = D, p.inter = I, p.y = y.as<float>();
    const double flops = 6.0 * rows * I * D;
    p.mode = cuda::GroupedGemmMode::kGrouped;
    const double t_grouped = TimeIt(stream, 5, [&] { return cuda::ExpertFfn(cublas, p, ws, stream); });
    if (ws.gemm.grouped_unsupported) std::printf("(cublasGemmGroupedBatchedEx refused bf16→f32 here: the grouped figure is the loop's)\n");
    p.mode = cuda::GroupedGemmMode::kLoop;
    const double t_loop = TimeIt(stream, 5, [&] { return cuda::ExpertFfn(cublas, p, ws, stream); });
    // Dense: the same two products as single GEMMs over all rows with one expert's weights.
    cuda::DeviceBuffer mid;
    CHECK_OK(mid.Reserve(static_cast<size_t>(rows * 2 * I) * 4));
    cuda::DeviceBuffer act;
    CHECK_OK(act.Reserve(static_cast<size_t>(rows * I) * 2));
    cudaMemset(act.data(), 0, act.bytes());
    cublasSetStream(cublas, stream);
    const float one = 1, zero = 0;
    const double t_dense = TimeIt(stream, 5, [&] {
      cublasStatus_t s = cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, 2 * I, rows, D, &one, gu[0], CUDA_R_16BF, D,
                                      x.data(), CUDA_R_16BF, D, &zero, mid.data(), CUDA_R_32F, 2 * I, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT);
      if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, D, rows, I, &one, down[0], CUDA_R_16BF, I, act.data(),
                         CUDA_R_16BF, I, &zero, y.data(), CUDA_R_32F, D, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      return cuda::CublasError(s, "dense cublasGemmEx");
    });
    // One grouped call per stage with bf16 outputs (the types cuBLAS's grouped GEMM takes).
    cuda::DeviceBuffer gu16, y16;
    CHECK_OK(gu16.Reserve(static_cast<size_t>(rows * 2 * I) * 2));
    CHECK_OK(y16.Reserve(static_cast<size_t>(rows * D) * 2));
    cuda::GroupedGemmWorkspace ws16;
    cuda::GroupedGemmParams g1{x.as<uint16_t>(), begin.data(), E, gu.data(), 2 * I, D, nullptr, cuda::GroupedGemmMode::kGrouped};
    g1.y_bf16 = gu16.as<uint16_t>();
    cuda::GroupedGemmParams g2{act.as<uint16_t>(), begin.data(), E, down.data(), D, I, nullptr, cuda::GroupedGemmMode::kGrouped};
    g2.y_bf16 = y16.as<uint16_t>();
    const double t_bf16 = TimeIt(stream, 5, [&] {
      absl::Status st = cuda::GroupedGemm(cublas, g1, ws16, stream);
      return st.ok() ? cuda::GroupedGemm(cublas, g2, ws16, stream) : st;
    });
    // The roofline: the routed experts' weights (those with rows), the activations in and out,
    // at the copy bandwidth; the FLOPs at the tensor peak.
    int64_t used = 0;
    for (int64_t e = 0; e < E; ++e) used += count[e] > 0;
    const double bytes = 2.0 * used * 3 * I * D + 2.0 * rows * D + 4.0 * rows * D;
    const double t_roof = std::max(flops / limits.tensor_flops, bytes / limits.copy_bytes);
    const double best = std::min({t_grouped, t_loop, t_bf16});
    std::printf("expert FFN %5lld tokens (V3: 7168 x 2048, 256 experts, top-8; %lld rows): grouped call %7.1f TFLOP/s, "
                "GEMM loop %7.1f TFLOP/s, grouped with bf16 outputs%s %7.1f TFLOP/s, dense cuBLAS same work %7.1f "
                "TFLOP/s -> best %.0f%% of dense, %.0f%% of the roofline (%.1f us)\n",
                static_cast<long long>(T), static_cast<long long>(rows), flops / t_grouped / 1e12, flops / t_loop / 1e12,
                ws16.grouped_unsupported ? " (refused: loop)" : "", flops / t_bf16 / 1e12, flops / t_dense / 1e12,
                100 * t_dense / best, 100 * t_roof / best, t_roof * 1e6);
    std::fflush(stdout);
    if (T == 4096) dense_4096 = t_dense, grouped_4096 = best;
  }
  if (dense_4096 > 0) {
    std::printf("target: grouped expert GEMM >= 80%% of dense cuBLAS at 4096 tokens: %s\n",
                dense_4096 / grouped_4096 >= 0.8 ? "met" : "NOT met");
  }
}

std::vector<int32_t> RandomPrompt(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = static_cast<int32_t>(rng() % vocab);
  return ids;
}

// Decode tokens per second at `batch` after prompts of `context` tokens; with `count`, also the
// kernels and copies of one decode step (CUPTI), or why they could not be counted.
double DecodeRate(const ModelWeights& w, const EngineOptions& options, int64_t batch, int64_t context, int64_t steps,
                  std::string* count = nullptr) {
  Engine engine(w, options);
  for (int64_t b = 0; b < batch; ++b) {
    Request r;
    r.prompt_ids = RandomPrompt(context, w.config.vocab_size, 100 + b);
    r.max_new_tokens = steps + 2;
    r.stop_at_eos = false;
    (void)engine.Add(r);
  }
  while (engine.Step() && engine.last_step().prefill_tokens > 0) {
  }
  if (count != nullptr) {
    KernelCounter counter;
    if (absl::Status s = counter.Start(); !s.ok()) {
      *count = absl::StrCat("launches not counted: ", s.message());
    } else {
      engine.Step();
      const KernelCount n = counter.Stop();
      *count = absl::StrCat(n.kernels, " kernels and ", n.copies, " copies per decode step (",
                            w.config.num_hidden_layers, " layers)");
    }
  }
  int64_t tokens = 0;
  const double t0 = Now();
  for (int64_t s = 0; s < steps && engine.Step(); ++s) tokens += engine.last_step().decode_tokens;
  return tokens / (Now() - t0);
}

void BenchEndToEnd(const std::string& model, const std::string& device, const std::vector<int64_t>& batches, bool cpu,
                   DType kv_dtype) {
  auto loaded = LoadModelWeights(model);
  CHECK_OK(loaded.status());
  const ModelWeights& w = **loaded;
  EngineOptions options;
  options.kv.dtype = kv_dtype;
  const int64_t max_batch = *std::max_element(batches.begin(), batches.end());
  options.max_running = std::max<int64_t>(options.max_running, max_batch);
  options.kv.max_tokens = max_batch * (64 + 32 + 2 + options.kv.page_size);
  EngineOptions gpu_options = options;
  auto backend = MakeDeviceBackend(DeviceOptions{device, 0.9}, w, gpu_options);
  CHECK_OK(backend.status());
  for (int64_t b : batches) {
    std::string launches;
    const double gpu = DecodeRate(w, gpu_options, b, 64, 32, &launches);
    std::printf("end-to-end decode %s, %s cache, batch %3lld: GPU %9.1f tok/s", model.c_str(), DTypeName(kv_dtype),
                static_cast<long long>(b), gpu);
    if (cpu) {
      const double on_cpu = DecodeRate(w, options, b, 64, b > 8 ? 8 : 16);
      std::printf(", CPU engine (%d threads) %8.1f tok/s, %.1fx", omp_get_max_threads(), on_cpu, gpu / on_cpu);
    }
    std::printf("; %s\n", launches.c_str());
    std::fflush(stdout);
  }
}

std::vector<int64_t> ParseList(const std::string& s) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (absl::SimpleAtoi(part, &v) && v > 0) out.push_back(v);
  }
  return out;
}

}  // namespace
}  // namespace daedalus

int main(int argc, char** argv) {
  using namespace daedalus;
  CLI::App app{"daedalus-bench-gpu: the GPU path's figures beside limits measured in the same run"};
  std::string model, device = "cuda:0", tokens = "128,4096", batches = "1,64", only = "peak,mla,experts,e2e", kv_dtype = "bf16";
  bool no_cpu = false;
  app.add_option("--model", model, "checkpoint for the end-to-end figures (e.g. make-model --preset bench)");
  app.add_option("--device", device, "cuda:N");
  app.add_option("--expert-tokens", tokens, "token counts for the expert GEMM figures");
  app.add_option("--batches", batches, "decode batch sizes for the end-to-end figures");
  app.add_option("--only", only, "comma-separated parts: peak, mla, experts, e2e (e2e needs --model)");
  app.add_flag("--no-cpu", no_cpu, "skip the CPU engine's figures");
  app.add_option("--kv-dtype", kv_dtype, "latent cache dtype of the end-to-end figures: bf16 | fp8")
      ->check(CLI::IsMember({"bf16", "fp8"}));
  CLI11_PARSE(app, argc, argv);
  std::set<std::string> parts;
  for (absl::string_view part : absl::StrSplit(only, ',', absl::SkipEmpty())) {
    if (part != "peak" && part != "mla" && part != "experts" && part != "e2e") {
      std::fprintf(stderr, "daedalus-bench-gpu: --only: unknown part \"%s\" (expected peak, mla, experts, e2e)\n",
                   std::string(part).c_str());
      return 1;
    }
    parts.insert(std::string(part));
  }
  if (absl::Status s = cuda::DevicePresent(); !s.ok()) {
    std::fprintf(stderr, "daedalus-bench-gpu: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  auto index = ParseDevice(device);
  if (!index.ok() || *index < 0) {
    std::fprintf(stderr, "daedalus-bench-gpu: --device %s: expected cuda:N\n", device.c_str());
    return 1;
  }
  cudaSetDevice(*index);
  std::printf("device: %s\n", cuda::DeviceDescription(*index).c_str());
  if (parts.count("peak") || parts.count("mla") || parts.count("experts")) {
    cudaStream_t stream;
    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    cublasHandle_t cublas;
    cublasCreate(&cublas);
    const Limits limits = MeasureLimits(cublas, stream);
    if (parts.count("mla"))
      for (auto [kernel, fp8] : {std::pair{cuda::MlaDecodeKernel::kMma, false}, {cuda::MlaDecodeKernel::kMma, true},
                                 {cuda::MlaDecodeKernel::kWmma, false}, {cuda::MlaDecodeKernel::kCudaCores, false},
                                 {cuda::MlaDecodeKernel::kCudaCores, true}})
        for (auto [b, ctx] : {std::pair<int64_t, int64_t>{64, 4096}, {1, 4096}, {64, 1024}, {1, 32768}})
          BenchMlaDecode(*index, stream, b, ctx, limits, kernel, fp8);
    if (parts.count("experts")) BenchExperts(cublas, stream, ParseList(tokens), limits);
    cublasDestroy(cublas);
    cudaStreamDestroy(stream);
  }
  if (parts.count("e2e")) {
    if (model.empty()) {
      std::fprintf(stderr, "daedalus-bench-gpu: e2e needs --model\n");
      return 1;
    }
    BenchEndToEnd(model, device, ParseList(batches), !no_cpu, kv_dtype == "fp8" ? DType::kF8E4M3 : DType::kBF16);
  }
  return 0;
}
