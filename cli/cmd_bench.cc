// `daedalus bench`: prefill and decode speed, KV cache bytes and peak memory, each beside the
// limit it runs against, measured in the same run with the active CPU kernel tier: the DRAM
// read bandwidth (batch-1 decode streams every active weight once), the float FMA peak, and the
// peak of the unit the tier's bf16 GEMM uses. `--json` prints one object instead of text.
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "cli/huge_pages.h"
#include "cli/machine.h"
#include "cli/request_io.h"
#include "core/kv_row.h"
#include "kernels/cpu_isa.h"
#include "kernels/cpu_probes.h"
#include "kernels/ops.h"
#include "nlohmann/json.hpp"
#include "worker/engine.h"
#include "worker/kv_cache.h"
#include "worker/presets.h"

namespace daedalus {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<int32_t> RandomPrompt(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = static_cast<int32_t>(rng() % vocab);
  return ids;
}

// Each kind of op's share of `seconds` (with EngineOptions::profile_ops), largest first.
using OpShares = std::vector<std::pair<std::string, double>>;
OpShares SharesOf(const std::vector<ProfilingBackend::OpTime>& times, double seconds) {
  OpShares shares;
  for (const ProfilingBackend::OpTime& op : times) shares.emplace_back(op.op, op.seconds / seconds);
  std::sort(shares.begin(), shares.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  return shares;
}

// "  <what> by op: Linear 40.1% ...; outside the ops (scheduling, sampling) 1.2%"
void PrintOpShares(const char* what, const OpShares& shares) {
  double in_ops = 0;
  std::printf("  %s by op:", what);
  for (const auto& [op, share] : shares) {
    std::printf(" %s %.1f%%", op.c_str(), 100 * share);
    in_ops += share;
  }
  std::printf("; outside the ops (scheduling, sampling) %.1f%%\n", 100 * (1 - in_ops));
}

struct PrefillFigures {
  double tok_s = 0;
  OpShares op_shares;  // of the best repetition, with --profile
};

// An engine's first prompt as long as `prompt_len` faults in the activation and scratch buffers
// of its steps (grown on demand): a 512-token prefill after only a 32-token one took ~6,600 page
// faults and ran 14% slower than the next. A serving engine has served such prompts before, so
// the timed prompts follow one of the same length (as llama.cpp's do in scripts/bench-peer.sh).
void WarmUp(Engine& engine, int64_t prompt_len, int64_t vocab) {
  Request warm_up;
  warm_up.prompt_ids = RandomPrompt(prompt_len, vocab, 0);
  warm_up.max_new_tokens = 0;
  (void)engine.Add(warm_up);
  engine.RunToCompletion();
}

// Prefill tokens/s of one prompt (best of `reps`), on a warmed-up engine (WarmUp).
PrefillFigures PrefillRate(const ModelWeights& w, const EngineOptions& options, int64_t prompt_len, int reps) {
  PrefillFigures best;
  Engine engine(w, options);
  WarmUp(engine, prompt_len, w.config.vocab_size);
  (void)engine.TakeOpTimes();
  for (int rep = 0; rep < reps; ++rep) {
    Request r;
    r.prompt_ids = RandomPrompt(prompt_len, w.config.vocab_size, rep + 1);
    r.max_new_tokens = 0;
    (void)engine.Add(r);
    const double t0 = Now();
    engine.RunToCompletion();
    const double seconds = Now() - t0;
    const std::vector<ProfilingBackend::OpTime> times = engine.TakeOpTimes();  // this repetition's alone
    if (prompt_len / seconds > best.tok_s) best = {prompt_len / seconds, SharesOf(times, seconds)};
  }
  return best;
}

// Time to first token of a prompt_len-token prompt whose first `cached` tokens another request
// left in the prefix cache, against the same prompt computed whole (best of `reps` each).
struct CachedPrefix {
  double cached_s = 0, uncached_s = 0;
  int64_t cached_tokens = 0;  // whole pages of the shared prefix, as the engine served them
};
CachedPrefix CachedPrefixTtft(const ModelWeights& w, EngineOptions options, int64_t prompt_len, int64_t cached, int reps) {
  options.kv.prefix_caching = true;
  CachedPrefix out{1e30, 1e30, 0};
  for (int rep = 0; rep < reps; ++rep) {
    Engine engine(w, options);
    WarmUp(engine, prompt_len, w.config.vocab_size);  // no prefix in common with the prompts below
    auto first_token = [&](uint64_t suffix_seed) {
      Request r;
      r.prompt_ids = RandomPrompt(prompt_len, w.config.vocab_size, 1000 + rep);
      const auto suffix = RandomPrompt(prompt_len - cached, w.config.vocab_size, suffix_seed);
      std::copy(suffix.begin(), suffix.end(), r.prompt_ids.begin() + cached);
      r.max_new_tokens = 1;
      r.stop_at_eos = false;
      (void)engine.Add(r);
      const double t0 = Now();
      engine.RunToCompletion();
      return Now() - t0;
    };
    out.uncached_s = std::min(out.uncached_s, first_token(1));
    const int64_t before = engine.prompt_tokens_cached();
    out.cached_s = std::min(out.cached_s, first_token(2));
    out.cached_tokens = engine.prompt_tokens_cached() - before;
  }
  return out;
}

struct DecodeFigures {
  double tok_s = 0;
  double experts_per_layer = 0;  // distinct routed experts a step reads, per MoE layer (mean)
  double bandwidth = 0;          // bytes/s of the read probe's passes between the timed steps
  OpShares op_shares;  // with --profile: of the timed steps' wall time
};

// Steps the prefill of `batch` prompts of `context` tokens can take at most: sequences that
// finish their prompt decode (a token each, first) while later ones are still prefilling, so
// every step has room for at least max_batch_tokens - batch prompt tokens.
int64_t PrefillStepsAtMost(int64_t batch, int64_t context, int64_t max_batch_tokens) {
  const int64_t room = max_batch_tokens - batch;
  return (batch * context + room - 1) / room + 1;
}

// Probe passes between decode steps: one before the first step, then one after every round.
constexpr int64_t kProbeRounds = 8;

// Decode tokens/s with `batch` sequences generating together (prefills excluded from timing),
// how many distinct experts each step touched (from the engine's expert-load counters), and
// the DRAM read bandwidth of probe passes interleaved with the steps: on a shared machine the
// bandwidth a neighbour leaves changes from second to second, so the steps are compared with
// what the memory gave while they ran.
DecodeFigures DecodeRate(const ModelWeights& w, const EngineOptions& options, int64_t batch, int64_t context,
                         int64_t steps, ReadProbe& probe) {
  Engine engine(w, options);
  // Each sequence may have decoded once per prefill step before the timed steps begin: it asks
  // for that many tokens more, so that none finishes during them and each decodes `batch` rows.
  const int64_t early = PrefillStepsAtMost(batch, context, options.max_batch_tokens);
  for (int64_t b = 0; b < batch; ++b) {
    Request r;
    r.prompt_ids = RandomPrompt(context, w.config.vocab_size, 100 + b);
    r.max_new_tokens = steps + 2 + early;
    r.stop_at_eos = false;
    (void)engine.Add(r);
  }
  // Run until every sequence decodes, then time `steps` decode-only steps.
  while (engine.Step() && engine.last_step().prefill_tokens > 0) {
  }
  int64_t tokens = 0, timed = 0;
  (void)engine.TakeOpTimes();  // the prefills' ops are not the decode steps'
  ExpertLoad before = engine.expert_load();
  int64_t touched = 0, moe_layers = 0;
  double busy = 0;
  const double probe_bytes = probe.bytes_read(), probe_seconds = probe.seconds();
  const int64_t round = std::max<int64_t>(1, (steps + kProbeRounds - 1) / kProbeRounds);
  probe.Pass();
  for (int64_t s = 0; s < steps; ++s) {
    if (s > 0 && s % round == 0) probe.Pass();
    const double s0 = Now();
    if (!engine.Step()) break;
    busy += Now() - s0;
    tokens += engine.last_step().decode_tokens;
    ++timed;
    if (engine.last_step().decode_tokens != batch)
      std::fprintf(stderr, "bench: timed step %lld of batch %lld decoded %lld sequences\n", static_cast<long long>(s),
                   static_cast<long long>(batch), static_cast<long long>(engine.last_step().decode_tokens));
    const ExpertLoad& after = engine.expert_load();
    for (size_t l = 0; l < after.size(); ++l)
      for (size_t e = 0; e < after[l].size(); ++e) touched += after[l][e] > before[l][e];
    before = after;
  }
  probe.Pass();
  for (const auto& layer : before) moe_layers += !layer.empty();
  DecodeFigures f;
  f.tok_s = tokens / busy;
  f.bandwidth = (probe.bytes_read() - probe_bytes) / (probe.seconds() - probe_seconds);
  f.experts_per_layer = timed > 0 && moe_layers > 0 ? static_cast<double>(touched) / (timed * moe_layers) : 0;
  f.op_shares = SharesOf(engine.TakeOpTimes(), busy);
  return f;
}

// Peak resident memory since start or the last ResetPeakRss (VmHWM; getrusage's figure cannot
// be reset, and the bandwidth probe's 1 GiB buffer would count).
double PeakRssMiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }

}  // namespace

Command AddBenchCommand(CLI::App& app) {
  struct Flags {
    std::string model, batches = "1,8,64";
    int64_t prompt_len = 512, context = 64, steps = 32, cached_prefix = 0;
    int reps = 3;
    bool json = false, profile = false;
    EngineFlags engine;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--model", f->model, "checkpoint directory")->required();
  app.add_option("--prompt-len", f->prompt_len, "prefill prompt length")->check(CLI::PositiveNumber);
  app.add_option("--batches", f->batches, "decode batch sizes, comma-separated");
  app.add_option("--context", f->context, "prompt length before decode is timed");
  app.add_option("--steps", f->steps, "decode steps timed per batch size");
  app.add_option("--reps", f->reps, "prefill repetitions (best is reported)");
  app.add_option("--cached-prefix", f->cached_prefix,
                 "also time the first token of a --prompt-len prompt whose first N tokens are in the prefix cache, "
                 "against the same prompt uncached");
  f->engine.Register(app);
  app.add_flag("--profile", f->profile,
               "also time each op of the forward pass (worker/backend.h) in the decode steps and print each kind's "
               "share of a step (on a GPU each op is waited for, which slows the steps)");
  app.add_flag("--json", f->json, "print one JSON object (the figures below) instead of text");
  return [f]() {
    SetThreads(f->engine.threads);
    auto batches = ParseIdList(f->batches);
    if (!batches.ok() || batches->empty()) return Fail("--batches: expected comma-separated batch sizes");
    auto loaded = LoadModelWeights(f->model);
    if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
    const ModelWeights& w = **loaded;
    const ModelConfig& c = w.config;
    EngineOptions options = f->engine.Options(c);
    options.kv.prefix_caching = false;  // every figure computes its prompts (prefill repeats one)
    options.profile_ops = f->profile;
    const int64_t max_batch = *std::max_element(batches->begin(), batches->end());
    if (max_batch >= options.max_batch_tokens)
      return Fail(absl::StrCat("--batches: a decode batch of ", max_batch, " needs --max-batch-tokens above it (",
                               options.max_batch_tokens, " now), so that its prompts can be prefilled while it decodes"));
    options.max_running = std::max<int64_t>(options.max_running, max_batch);
    const int64_t tokens_per_sequence = f->context + f->steps + 2 +
                                        PrefillStepsAtMost(max_batch, f->context, options.max_batch_tokens) +
                                        options.kv.page_size;
    options.kv.max_tokens = std::max<int64_t>(options.kv.max_tokens, std::max(f->prompt_len, max_batch * tokens_per_sequence));
    // --device cuda:N: every engine below runs its steps on the GPU (one after another).
    auto backend = MakeDeviceBackend(f->engine.Device(), w, options);
    if (!backend.ok()) return Fail(std::string(backend.status().message()));
    if (absl::Status fits = PagedKvCache::CheckFits(c, options.kv); !fits.ok()) return Fail(std::string(fits.message()));
    FILE* text = f->json ? stderr : stdout;  // --json: the object alone on stdout
    if (*backend) std::fprintf(text, "device: %s\n", f->engine.device.c_str());
    const int threads = omp_get_max_threads();
    const auto [numa_nodes, numa_used] = NumaNodes(threads);
    if (numa_used > 1) {
      std::fprintf(stderr, "daedalus bench: warning: %d threads span %d NUMA nodes; memory-bound figures suffer. Run one "
                   "process per socket (mpirun --map-by socket --bind-to socket) or fewer threads.\n", threads, numa_used);
    }

    // The limits are probed before and after the timed runs and the better figure kept: on a
    // shared machine the bandwidth a neighbour leaves changes from second to second.
    const double bf16_before = MeasureBf16Peak(), fp32_before = MeasureFp32Peak();
    ReadProbe read_probe;  // its buffer stays resident through the decode runs: not the engine's memory
    const double bandwidth_before = read_probe.Best(5);
    ResetPeakRss();
    const PrefillFigures prefill_figures = PrefillRate(w, options, f->prompt_len, f->reps);
    const double prefill = prefill_figures.tok_s;
    CachedPrefix cached;
    if (f->cached_prefix > 0) cached = CachedPrefixTtft(w, options, f->prompt_len, std::min(f->cached_prefix, f->prompt_len), f->reps);
    std::vector<DecodeFigures> decode;
    double decode_bandwidth_best = 0;
    for (int32_t b : *batches) {
      decode.push_back(DecodeRate(w, options, b, f->context, f->steps, read_probe));
      decode_bandwidth_best = std::max(decode_bandwidth_best, decode.back().bandwidth);
    }
    const double peak_rss = PeakRssMiB() - read_probe.bytes() / 1048576.0;  // before the peak probes allocate
    const double bandwidth = std::max({bandwidth_before, read_probe.Best(5), decode_bandwidth_best});
    const double fp32_peak = std::max(fp32_before, MeasureFp32Peak());
    const double bf16_peak = std::max(bf16_before, MeasureBf16Peak());
    // Absorbed attention's products: on VDPBF16PS over a bf16 cache where the tier has it
    // (kernels/ops.h), else on the float FMA (rows widened to float).
    const bool bf16_attention = options.kv.dtype == DType::kBF16 && HasBf16Attention();
    const double attention_peak = bf16_attention ? MeasureBf16AttentionPeak() : fp32_peak;
    const DType dtype = w.projection_dtype();
    // The GEMM limit for these weights: float weights run on BLAS's float FMA, bf16 and fp8 on
    // the tier's bf16 unit.
    const double gemm_peak = dtype == DType::kF32 ? fp32_peak : bf16_peak;
    // Multiply-adds of a prefill token, two FLOPs per weight: every active projection but lm_head
    // and the last layer's feed-forward, which run on the prompt's last row alone (the logits it
    // samples from: worker/model.cc), once per prompt. Attention's own products are not counted.
    const double last_row = static_cast<double>(w.lm_head.rows * w.lm_head.cols + w.LastFeedForwardParametersPerToken());
    const double prefill_flops =
        2.0 * (static_cast<double>(w.ActiveParametersPerToken()) - last_row + last_row / static_cast<double>(f->prompt_len));
    // A decode token: every active projection, lm_head included.
    const double decode_flops = 2.0 * static_cast<double>(w.ActiveParametersPerToken());
    // Bytes a decode step reads: everything but the routed experts, plus each expert touched once.
    const int64_t k = c.num_experts_per_tok;
    const double active = static_cast<double>(w.ActiveBytesPerToken()), dense = static_cast<double>(w.DenseBytes());
    const double one_expert_all_layers = k > 0 ? (active - dense) / static_cast<double>(k) : 0;

    const double kv_bytes_per_token = static_cast<double>(KvRowBytes(c, options.kv.dtype) * c.num_hidden_layers);
    // Tokens a KV pool of 1 GiB holds in each cache dtype, as the engine sizes it (--kv-cache-mib).
    nlohmann::ordered_json kv_capacity;
    for (const char* kv_dtype : {"bf16", "fp8", "f32"}) {
      EngineFlags sized = f->engine;
      sized.kv_dtype = kv_dtype;
      sized.kv_mib = 1024;
      KvCacheOptions pool = sized.Options(c).kv;
      pool.host_pool = false;
      kv_capacity[kv_dtype] = PagedKvCache(c, pool).total_pages() * pool.page_size;
    }

    nlohmann::ordered_json out;
    const std::string tier = CpuIsaName(ActiveCpuIsa());
    out["bench"] = "engine";
    out["machine"] = {{"cpu", CpuModel()},     {"isa", tier},          {"threads", threads},
                      {"numa_nodes", numa_nodes}, {"memory_gib", static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                                                                     static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 30)}};
    out["kernel_tier"] = CpuIsaDescription(ActiveCpuIsa());
    out["huge_pages"] = HugePagesDescription();
    out["model"] = {{"path", f->model}, {"weights", DTypeName(dtype)}, {"hidden_size", c.hidden_size},
                    {"num_hidden_layers", c.num_hidden_layers}, {"n_routed_experts", c.n_routed_experts},
                    {"num_experts_per_tok", c.num_experts_per_tok}, {"active_bytes_per_token", active}};
    out["bandwidth_gbs"] = bandwidth / 1e9;
    out["fp32_peak_gflops"] = fp32_peak / 1e9;
    out["bf16_peak_gflops"] = bf16_peak / 1e9;
    out["attention_peak_gflops"] = attention_peak / 1e9;
    out["prefill_tokens"] = f->prompt_len;
    out["prefill_tok_s"] = prefill;
    out["prefill_gflops"] = prefill * prefill_flops / 1e9;
    out["prefill_share_of_peak"] = prefill * prefill_flops / gemm_peak;
    if (f->cached_prefix > 0) {
      out["prefill_cached_prefix"] = {{"prompt_tokens", f->prompt_len}, {"cached_tokens", cached.cached_tokens},
                                      {"ttft_s", cached.cached_s}, {"uncached_ttft_s", cached.uncached_s},
                                      {"ratio", cached.cached_s / cached.uncached_s}};
    }
    nlohmann::ordered_json tok_s, roofline, share, experts, decode_bandwidth;
    for (size_t i = 0; i < batches->size(); ++i) {
      const int32_t b = (*batches)[i];
      const std::string key = std::to_string(b);
      // Roofline: the DRAM time of the bytes the step touched (at the bandwidth probed between
      // its steps), or the compute time of its multiply-adds, whichever is longer. Each sequence
      // attends over its latent cache (the mean context of the timed steps): those bytes count,
      // and so do absorbed attention's products (q·[c_kv | k_pe] and p·c_kv per head), at the
      // peak of the unit they run on (attention_peak).
      const double context = f->context + f->steps / 2.0;
      const double kv_read = b * context * kv_bytes_per_token;
      const double attention_flops = 2.0 * c.num_hidden_layers * c.num_attention_heads * context *
                                     (2.0 * c.kv_lora_rank + c.qk_rope_head_dim);
      const double step_bytes = dense + decode[i].experts_per_layer * one_expert_all_layers + kv_read;
      const double limit =
          std::min(decode[i].bandwidth * b / step_bytes, 1.0 / (decode_flops / gemm_peak + attention_flops / attention_peak));
      tok_s[key] = decode[i].tok_s;
      decode_bandwidth[key] = decode[i].bandwidth / 1e9;
      roofline[key] = limit;
      share[key] = decode[i].tok_s / limit;
      experts[key] = decode[i].experts_per_layer;
    }
    out["decode_tok_s"] = tok_s;
    out["decode_roofline_tok_s"] = roofline;
    out["decode_share_of_roofline"] = share;
    out["decode_experts_per_layer"] = experts;
    out["decode_bandwidth_gbs"] = decode_bandwidth;
    if (f->profile) {
      auto json_of = [](const OpShares& shares) {
        nlohmann::ordered_json ops = nlohmann::ordered_json::object();
        for (const auto& [op, share] : shares) ops[op] = share;
        return ops;
      };
      out["prefill_op_share"] = json_of(prefill_figures.op_shares);
      nlohmann::ordered_json op_share = nlohmann::ordered_json::object();
      for (size_t i = 0; i < batches->size(); ++i) op_share[std::to_string((*batches)[i])] = json_of(decode[i].op_shares);
      out["decode_op_share"] = op_share;
    }
    Engine probe(w, options);
    out["kv_dtype"] = f->engine.kv_dtype;
    out["kv_bytes_per_token"] = probe.cache().BytesPerToken();
    out["kv_capacity_tokens_per_gib"] = kv_capacity;
    out["peak_rss_mib"] = peak_rss;
    if (f->json) {
      std::printf("%s\n", out.dump(2).c_str());
      return 0;
    }

    std::printf("machine: %s, %d threads, %d NUMA node(s)\n", CpuModel().c_str(), threads, numa_nodes);
    std::printf("kernel tier: %s; %s\n", CpuIsaDescription(ActiveCpuIsa()).c_str(), HugePagesDescription().c_str());
    std::printf("model: %s (hidden %lld, %lld layers, %lld experts top-%lld), weights %s, %.1f MiB total, "
                "%.1f MiB active per token\n",
                f->model.c_str(), static_cast<long long>(c.hidden_size), static_cast<long long>(c.num_hidden_layers),
                static_cast<long long>(c.n_routed_experts), static_cast<long long>(c.num_experts_per_tok),
                DTypeName(dtype), w.TotalBytes() / 1048576.0, active / 1048576.0);
    std::printf("limits measured now: DRAM read %.1f GB/s (best), float FMA %.1f GFLOP/s, bf16 unit %.1f GFLOP/s%s\n",
                bandwidth / 1e9, fp32_peak / 1e9, bf16_peak / 1e9,
                bf16_attention ? absl::StrCat(", attention's VDPBF16PS ", absl::StrFormat("%.1f", attention_peak / 1e9),
                                              " GFLOP/s").c_str()
                               : "");
    std::printf("prefill %lld tokens: %.1f tok/s, %.1f GFLOP/s in projections (%.0f%% of the %s peak)\n",
                static_cast<long long>(f->prompt_len), prefill, prefill * prefill_flops / 1e9,
                100 * prefill * prefill_flops / gemm_peak, dtype == DType::kF32 ? "float FMA" : "bf16 unit");
    if (f->profile) PrintOpShares("its time", prefill_figures.op_shares);
    if (f->cached_prefix > 0) {
      std::printf("prefix cache: first token of a %lld-token prompt with %lld tokens cached in %.3f s, %.3fx its uncached %.3f s\n",
                  static_cast<long long>(f->prompt_len), static_cast<long long>(cached.cached_tokens), cached.cached_s,
                  cached.cached_s / cached.uncached_s, cached.uncached_s);
    }
    const double decode1 = decode.empty() ? 0 : decode[0].tok_s;
    for (size_t i = 0; i < batches->size(); ++i) {
      const std::string key = std::to_string((*batches)[i]);
      std::printf("decode batch %3d: %8.1f tok/s, %.0f%% of its roofline %.1f tok/s at the %.1f GB/s read between its "
                  "steps (%.1f experts/layer read per step)",
                  (*batches)[i], decode[i].tok_s, 100 * share[key].get<double>(), roofline[key].get<double>(),
                  decode[i].bandwidth / 1e9, decode[i].experts_per_layer);
      if (i > 0 && decode1 > 0) std::printf(", %.1fx batch %d", decode[i].tok_s / decode1, (*batches)[0]);
      std::printf("\n");
      if (f->profile) PrintOpShares("its steps", decode[i].op_shares);
    }
    std::printf("KV cache (%s): %.1f bytes/token (latent formula %.0f, paging overhead %.2f%%, page %lld tokens)\n",
                f->engine.kv_dtype.c_str(), probe.cache().BytesPerToken(), kv_bytes_per_token,
                100 * (probe.cache().BytesPerToken() / kv_bytes_per_token - 1), static_cast<long long>(options.kv.page_size));
    std::printf("KV capacity in 1 GiB: bf16 %lld tokens, fp8 %lld tokens (%.2fx bf16), f32 %lld tokens\n",
                kv_capacity["bf16"].get<long long>(), kv_capacity["fp8"].get<long long>(),
                kv_capacity["fp8"].get<double>() / kv_capacity["bf16"].get<double>(), kv_capacity["f32"].get<long long>());
    std::printf("peak resident memory: %.1f MiB\n", peak_rss);
    return 0;
  };
}

}  // namespace daedalus
