// daedalus-bench-gemm: the CPU GEMM (kernels/linear.h) against oneDNN's matmul on a checkpoint's
// own weights, in one process, the two alternating repetition by repetition.
//  - Groups of products, as a forward pass of `tokens` rows runs them: every layer's attention
//    projections; the dense MLPs and shared experts; the routed experts a batch of that many
//    tokens touches (min(experts, tokens · top-k) per MoE layer, each with the mean rows an
//    expert gets); lm_head. Ours runs each stage of a group (products that do not depend on
//    each other: gate and up of every expert, then down) as one LinearBatch, as the engine
//    does; oneDNN one matmul per product. A group larger than the caches streams its weights
//    from memory.
//  - oneDNN gets the same weights, reordered once into the layout its matmul asks for: in bf16
//    with bf16 activations where it implements that on this CPU and the checkpoint is bf16,
//    else widened to float (FP8 weights too: oneDNN has no FP8 matmul). It says which, and
//    which implementation it chose.
//  - Limits measured in the same run: the float FMA peak, the peak of the unit the tier's bf16
//    GEMM uses, and DRAM read bandwidth, probed once after every repetition pair as well (what
//    a shared machine left while the group ran). Each figure is given as a share of its
//    roofline: the longer of its weight bytes at the group's probed bandwidth and its
//    multiply-adds at its unit's peak.
//  - Every output of both is compared: a disagreement beyond the activations' rounding is an
//    error (exit 1).
// A program, not a test: it prints figures and asserts only that the two agree.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/huge_pages.h"
#include "cli/machine.h"
#include "cli/request_io.h"
#include "core/weight_memory.h"
#include "kernels/cpu/tier.h"
#include "kernels/cpu_isa.h"
#include "kernels/cpu_probes.h"
#include "kernels/linear.h"
#include "nlohmann/json.hpp"
#include "oneapi/dnnl/dnnl.hpp"
#include "worker/weights.h"

namespace daedalus {
namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// One product: `rows` tokens through `w`, reading input `input` of its stage (products with the
// same input read the same rows, as gate and up do).
struct Product {
  const WeightView* w;
  int64_t rows, input;
};
// Products that do not depend on each other: one LinearBatch of ours, as the engine runs them.
using Stage = std::vector<Product>;
struct Group {
  std::string name;
  std::vector<Stage> stages;
  int64_t products() const {
    int64_t n = 0;
    for (const Stage& s : stages) n += static_cast<int64_t>(s.size());
    return n;
  }
};

void AddMlp(const MlpWeights& m, int64_t rows, int64_t input, Stage& gate_up, Stage& down) {
  gate_up.push_back({&m.gate_proj, rows, input});
  gate_up.push_back({&m.up_proj, rows, input});
  down.push_back({&m.down_proj, rows, input});
}

// Every layer's products of each kind, at `tokens` rows, in the stages the forward pass has.
std::vector<Group> Groups(const ModelWeights& model, int64_t tokens) {
  const ModelConfig& c = model.config;
  Group attention{"attention", {}}, mlp{"dense_mlp", {}}, experts{"experts", {}}, head{"lm_head", {}};
  for (const LayerWeights& layer : model.layers) {
    const AttentionWeights& a = layer.attn;
    const WeightView& q = a.q_proj ? *a.q_proj : *a.q_a_proj;
    attention.stages.push_back({{&q, tokens, 0}, {&a.kv_a_proj_with_mqa, tokens, 0}});
    if (a.q_b_proj) attention.stages.push_back({{&*a.q_b_proj, tokens, 0}});
    attention.stages.push_back({{&a.kv_b_proj, tokens, 0}});
    attention.stages.push_back({{&a.o_proj, tokens, 0}});
    Stage gate_up, down;
    if (!layer.moe) AddMlp(layer.dense, tokens, 0, gate_up, down);
    if (layer.shared_experts) AddMlp(*layer.shared_experts, tokens, 0, gate_up, down);
    if (!gate_up.empty()) mlp.stages.push_back(gate_up), mlp.stages.push_back(down);
    if (layer.moe) {
      const int64_t slots = tokens * c.num_experts_per_tok, touched = std::min<int64_t>(c.n_routed_experts, slots);
      Stage routed_gate_up, routed_down;
      for (int64_t e = 0; e < touched; ++e)
        AddMlp(layer.experts[e], (slots + touched - 1) / touched, e, routed_gate_up, routed_down);
      experts.stages.push_back(routed_gate_up), experts.stages.push_back(routed_down);
    }
  }
  head.stages.push_back({{&model.lm_head, tokens, 0}});
  std::vector<Group> groups;
  for (Group* g : {&attention, &mlp, &experts, &head})
    if (!g->stages.empty()) groups.push_back(std::move(*g));
  return groups;
}

// Where each product of a stage reads and writes: its input's rows (one region per input) and
// outputs of its own, in two buffers sized for the group's largest stage.
struct Layout {
  std::vector<std::vector<int64_t>> x, y;  // offsets in floats, by stage and product
  int64_t x_floats = 0, y_floats = 0;
  explicit Layout(const Group& g) {
    for (const Stage& stage : g.stages) {
      std::map<int64_t, int64_t> inputs;
      int64_t xf = 0, yf = 0;
      x.emplace_back(), y.emplace_back();
      for (const Product& p : stage) {
        auto [at, fresh] = inputs.emplace(p.input, xf);
        if (fresh) xf += p.rows * p.w->cols;
        x.back().push_back(at->second);
        y.back().push_back(yf);
        yf += p.rows * p.w->rows;
      }
      x_floats = std::max(x_floats, xf), y_floats = std::max(y_floats, yf);
    }
  }
};

// The same products through oneDNN, one matmul each: its weights reordered for that shape's
// primitive (on huge pages, as ours are), and for bf16 the activations' conversion.
class OneDnnGroup {
 public:
  OneDnnGroup(dnnl::engine& engine, bool bf16, const Group& group, const Layout& layout, float* x, float* y)
      : bf16_(bf16) {
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    dnnl::stream stream(engine);
    const dt act = bf16 ? dt::bf16 : dt::f32;
    for (size_t s = 0; s < group.stages.size(); ++s) {
      calls_.emplace_back();
      for (size_t i = 0; i < group.stages[s].size(); ++i) {
        const Product& p = group.stages[s][i];
        const dnnl::memory::dim M = p.rows, K = p.w->cols, N = p.w->rows;
        Call call;
        const dnnl::matmul::primitive_desc pd(
            dnnl::matmul::desc({{M, K}, act, tag::ab}, {{K, N}, act, tag::any}, {{M, N}, dt::f32, tag::ab}), engine);
        impls_.insert(pd.impl_info_str());
        call.matmul = dnnl::matmul(pd);
        // The weight as floats ([N, K] row-major is [K, N] in tag ba), then reordered.
        std::vector<float> w(static_cast<size_t>(N * K));
#pragma omp parallel for
        for (int64_t n = 0; n < N; ++n)
          for (int64_t k = 0; k < K; ++k) w[n * K + k] = p.w->at(n, k);
        dnnl::memory user({{K, N}, dt::f32, tag::ba}, engine, w.data());
        call.weight_memory = std::make_unique<WeightBuffer>(pd.weights_desc().get_size());
        call.weights = dnnl::memory(pd.weights_desc(), engine, call.weight_memory->data());
        dnnl::reorder(user, call.weights).execute(stream, user, call.weights);
        stream.wait();
        call.x = dnnl::memory({{M, K}, dt::f32, tag::ab}, engine, x + layout.x[s][i]);
        call.y = dnnl::memory({{M, N}, dt::f32, tag::ab}, engine, y + layout.y[s][i]);
        if (bf16) {
          call.x_bf16 = dnnl::memory(pd.src_desc(), engine);
          call.convert = dnnl::reorder(call.x, call.x_bf16);
        }
        weight_bytes_ += static_cast<double>(pd.weights_desc().get_size());
        calls_.back().push_back(std::move(call));
      }
    }
  }
  void RunStage(dnnl::stream& stream, size_t s) {
    for (Call& c : calls_[s]) {
      const dnnl::memory* src = &c.x;
      if (bf16_) c.convert.execute(stream, c.x, c.x_bf16), src = &c.x_bf16;
      c.matmul.execute(stream, {{DNNL_ARG_SRC, *src}, {DNNL_ARG_WEIGHTS, c.weights}, {DNNL_ARG_DST, c.y}});
    }
    stream.wait();
  }
  void Run(dnnl::stream& stream) {
    for (size_t s = 0; s < calls_.size(); ++s) RunStage(stream, s);
  }
  const std::set<std::string>& impls() const { return impls_; }
  double weight_bytes() const { return weight_bytes_; }

 private:
  struct Call {
    dnnl::matmul matmul;
    dnnl::reorder convert;
    std::unique_ptr<WeightBuffer> weight_memory;
    dnnl::memory weights, x, x_bf16, y;
  };
  bool bf16_;
  std::vector<std::vector<Call>> calls_;  // by stage
  std::set<std::string> impls_;  // the implementations oneDNN chose
  double weight_bytes_ = 0;
};

// Ours: each stage as one LinearBatch, as the engine runs it.
class OurGroup {
 public:
  OurGroup(const Group& group, const Layout& layout, const float* x, float* y) {
    for (size_t s = 0; s < group.stages.size(); ++s) {
      stages_.emplace_back();
      for (size_t i = 0; i < group.stages[s].size(); ++i) {
        const Product& p = group.stages[s][i];
        stages_.back().push_back({x + layout.x[s][i], p.rows, *p.w, y + layout.y[s][i]});
      }
    }
  }
  void RunStage(size_t s) { LinearBatch(stages_[s].data(), static_cast<int64_t>(stages_[s].size())); }
  void Run() {
    for (size_t s = 0; s < stages_.size(); ++s) RunStage(s);
  }

 private:
  std::vector<std::vector<LinearProblem>> stages_;
};

// Whether oneDNN multiplies bf16 by bf16 into float on this CPU.
bool OneDnnHasBf16(dnnl::engine& engine) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  try {
    const dnnl::memory::desc src({64, 256}, dt::bf16, tag::ab), weights({256, 256}, dt::bf16, tag::any);
    dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, weights, {{64, 256}, dt::f32, tag::ab}), engine);
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run(const std::string& model_dir, const std::string& tokens_list, int reps, int threads, bool json) {
  SetThreads(threads);
  auto tokens = ParseIdList(tokens_list);
  if (!tokens.ok() || tokens->empty() || *std::min_element(tokens->begin(), tokens->end()) < 1) {
    std::fprintf(stderr, "daedalus-bench-gemm: --tokens: expected comma-separated positive counts\n");
    return 1;
  }
  auto loaded = LoadModelWeights(model_dir);
  if (!loaded.ok()) {
    std::fprintf(stderr, "daedalus-bench-gemm: %s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  const ModelWeights& model = **loaded;
  const DType dtype = model.projection_dtype();
  FILE* text = json ? stderr : stdout;
  const int n_threads = omp_get_max_threads();
  const cpu::TierKernels& tier = cpu::Kernels();
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const bool onednn_bf16 = dtype == DType::kBF16 && OneDnnHasBf16(engine);
  const dnnl_version_t* version = dnnl_version();
  const std::string onednn_version = absl::StrCat(version->major, ".", version->minor, ".", version->patch);

  ReadProbe probe;
  const double bandwidth = probe.Best(5), fp32_peak = MeasureFp32Peak(), bf16_peak = MeasureBf16Peak();
  // Ours: float weights go through BLAS on the float FMA, bf16 and FP8 through the tier's unit.
  const double our_peak = dtype == DType::kF32 ? fp32_peak : bf16_peak;
  // oneDNN's bf16 matmul uses the dot-product unit our avx512bf16 tier uses, where there is one.
  const double onednn_peak = onednn_bf16 && tier.bf16_activations ? bf16_peak : fp32_peak;
  // Disagreement allowed, relative to the largest output: float activations on both sides give
  // float rounding; activations rounded to bf16 on either side, bf16's.
  const double bound = onednn_bf16 || tier.bf16_activations ? 2e-2 : 1e-4;

  const auto [numa_nodes, numa_used] = NumaNodes(n_threads);
  if (numa_used > 1)
    fprintf(stderr, "daedalus-bench-gemm: warning: %d threads span %d NUMA nodes; memory-bound figures suffer. Run on "
            "one socket (numactl --cpunodebind=0 --membind=0) or fewer threads.\n", n_threads, numa_used);
  fprintf(text, "machine: %s, %d threads, %d NUMA node(s)\n", CpuModel().c_str(), n_threads, numa_nodes);
  fprintf(text, "kernel tier: %s\n", CpuIsaDescription(ActiveCpuIsa()).c_str());
  fprintf(text, "weights: %s (%s); oneDNN %s: %s\n", model_dir.c_str(), DTypeName(dtype),
          onednn_version.c_str(),
          onednn_bf16 ? "bf16 weights and activations, float outputs"
                      : dtype == DType::kBF16 ? "no bf16 matmul on this CPU: the same weights widened to float"
                                              : "the same weights as float (oneDNN has no FP8 matmul)");
  fprintf(text,
          "limits measured now: DRAM read %.1f GB/s (best; GB/s below: probed between the group's repetitions), "
          "float FMA %.1f GFLOP/s, bf16 unit %.1f GFLOP/s\n",
          bandwidth / 1e9, fp32_peak / 1e9, bf16_peak / 1e9);
  fprintf(text, "%-10s %6s %8s %6s | %-27s | %-25s | %8s %9s\n", "group", "tokens", "products", "GB/s",
          "Daedalus GFLOP/s (roofline)", "oneDNN GFLOP/s (roofline)", "speedup", "rel.error");

  nlohmann::ordered_json results = nlohmann::json::array();
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::set<std::string> impls;  // oneDNN's implementations, over every group
  for (const int32_t t : *tokens) {
    for (const Group& group : Groups(model, t)) {
      const Layout layout(group);
      double flops = 0, our_bytes = 0;
      for (const Stage& stage : group.stages)
        for (const Product& p : stage) {
          flops += 2.0 * static_cast<double>(p.rows * p.w->rows * p.w->cols);
          our_bytes += static_cast<double>(p.w->bytes());
        }
      std::vector<float> x(layout.x_floats), y(layout.y_floats);
      for (float& v : x) v = uniform(rng);
      OneDnnGroup onednn(engine, onednn_bf16, group, layout, x.data(), y.data());
      OurGroup ours(group, layout, x.data(), y.data());
      impls.insert(onednn.impls().begin(), onednn.impls().end());
      // Warm-up, then alternating repetitions.
      ours.Run();
      onednn.Run(stream);
      std::vector<double> our_times, onednn_times;
      const double probe_bytes = probe.bytes_read(), probe_seconds = probe.seconds();
      for (int r = 0; r < reps; ++r) {
        double t0 = Now();
        ours.Run();
        our_times.push_back(Now() - t0);
        t0 = Now();
        onednn.Run(stream);
        onednn_times.push_back(Now() - t0);
        probe.Pass();
      }
      const double group_bandwidth = (probe.bytes_read() - probe_bytes) / (probe.seconds() - probe_seconds);
      // Every output of both, stage by stage, relative to the stage's largest.
      double error = 0;
      for (size_t s = 0; s < group.stages.size(); ++s) {
        const Product& last = group.stages[s].back();
        const int64_t outputs = layout.y[s].back() + last.rows * last.w->rows;
        ours.RunStage(s);
        const std::vector<float> mine(y.begin(), y.begin() + outputs);
        onednn.RunStage(stream, s);
        double diff = 0, scale = 0;
        for (int64_t j = 0; j < outputs; ++j) {
          diff = std::max(diff, static_cast<double>(std::fabs(mine[j] - y[j])));
          scale = std::max(scale, static_cast<double>(std::fabs(y[j])));
        }
        error = std::max(error, scale > 0 ? diff / scale : diff);
      }
      const double ours_s = Median(our_times), theirs_s = Median(onednn_times);
      const double our_limit = std::max(our_bytes / group_bandwidth, flops / our_peak);
      const double onednn_limit = std::max(onednn.weight_bytes() / group_bandwidth, flops / onednn_peak);
      fprintf(text, "%-10s %6d %8lld %6.1f | %19.1f (%3.0f%%) | %17.1f (%3.0f%%) | %7.2fx %9.1e\n", group.name.c_str(),
              t, static_cast<long long>(group.products()), group_bandwidth / 1e9, flops / ours_s / 1e9,
              100 * our_limit / ours_s, flops / theirs_s / 1e9, 100 * onednn_limit / theirs_s, theirs_s / ours_s, error);
      results.push_back({{"group", group.name},
                         {"tokens", t},
                         {"products", group.products()},
                         {"gflop", flops / 1e9},
                         {"bandwidth_gbs", group_bandwidth / 1e9},
                         {"daedalus", {{"seconds", ours_s}, {"gflops", flops / ours_s / 1e9},
                                       {"weight_gb", our_bytes / 1e9}, {"share_of_roofline", our_limit / ours_s}}},
                         {"onednn", {{"seconds", theirs_s}, {"gflops", flops / theirs_s / 1e9},
                                     {"weight_gb", onednn.weight_bytes() / 1e9},
                                     {"share_of_roofline", onednn_limit / theirs_s}, {"impl", absl::StrJoin(onednn.impls(), ", ")}}},
                         {"speedup", theirs_s / ours_s},
                         {"max_rel_error", error}});
      if (!(error <= bound)) {
        fprintf(stderr, "daedalus-bench-gemm: %s at %d tokens: outputs differ from oneDNN's by %.3g of the largest, "
                        "beyond %.0e\n", group.name.c_str(), t, error, bound);
        return 1;
      }
    }
  }
  const std::string impl_list = absl::StrJoin(impls, ", ");
  fprintf(text, "oneDNN implementation: %s; medians of %d alternating repetitions\n", impl_list.c_str(), reps);
  if (json) {
    nlohmann::ordered_json out;
    out["bench"] = "gemm";
    out["machine"] = {{"cpu", CpuModel()}, {"isa", CpuIsaName(ActiveCpuIsa())}, {"threads", n_threads},
                      {"numa_nodes", numa_nodes}};
    out["kernel_tier"] = CpuIsaDescription(ActiveCpuIsa());
    out["weights"] = DTypeName(dtype);
    out["onednn"] = {{"version", onednn_version}, {"dtype", onednn_bf16 ? "bf16" : "f32"}, {"impl", impl_list}};
    out["bandwidth_gbs"] = bandwidth / 1e9;
    out["fp32_peak_gflops"] = fp32_peak / 1e9;
    out["bf16_peak_gflops"] = bf16_peak / 1e9;
    out["max_rel_error_bound"] = bound;
    out["reps"] = reps;
    out["results"] = results;
    std::printf("%s\n", out.dump(2).c_str());
  }
  return 0;
}

}  // namespace
}  // namespace daedalus

int main(int argc, char** argv) {
  daedalus::StartOnHugePages(argv);
  omp_set_max_active_levels(1);
  CLI::App app{"daedalus-bench-gemm: the CPU GEMM against oneDNN's matmul on a checkpoint's weights"};
  std::string model, tokens = "1,8,64,512";
  int reps = 9, threads = 0;
  bool json = false;
  app.add_option("--model", model, "checkpoint directory")->required();
  app.add_option("--tokens", tokens, "token rows per product, comma-separated");
  app.add_option("--reps", reps, "repetitions of each group (the median is reported)")->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "threads (default: OMP_NUM_THREADS or all cores)");
  app.add_flag("--json", json, "print one JSON object instead of the table (which goes to stderr)");
  CLI11_PARSE(app, argc, argv);
  try {
    return daedalus::Run(model, tokens, reps, threads, json);
  } catch (const dnnl::error& e) {  // a shape or data type oneDNN refuses on this CPU
    std::fprintf(stderr, "daedalus-bench-gemm: oneDNN: %s (status %d)\n", e.what(), static_cast<int>(e.status));
    return 1;
  }
}
