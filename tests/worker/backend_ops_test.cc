// Every op of worker/backend.h, on every backend this machine has, against the CPU backend on
// the generic tier (float arithmetic, no bf16 rounding of activations: the reference), with a
// bound per op. Shapes: the `tiny` preset, and DeepSeek-V3's (its config.json with one MoE
// layer, four routed experts and a 1,024-token vocabulary, so that a checkpoint is made in
// seconds), also with the FP8 latent cache for the attention ops. Backends: the CPU on each of
// its other tiers, and CUDA (cuda:0) with its default fast numerics and with float precision
// where a GPU exists; a backend this machine lacks is reported skipped, saying why.
//
// Each op runs on the same inputs on both sides: a three-sequence batch (a decode token after
// 300 cached positions attending absorbed, a prefill chunk after cached positions attending
// naive, and one attending absorbed) over a paged latent cache filled by KvWrite in an earlier
// batch.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <unistd.h>

#include "gtest/gtest.h"
#include "kernels/cpu_isa.h"
#include "worker/cpu_backend.h"
#include "worker/device_backend.h"
#include "worker/make_model.h"
#include "worker/presets.h"

namespace daedalus {
namespace {

enum class Op { kEmbed, kRmsNorm, kAdd, kLinear, kRope, kMlaNaive, kMlaAbsorbed, kRoute, kMlp, kLocalExperts,
                kExpertRows, kCombine, kLogitRows, kLogits };
const char* OpName(Op op) {
  static const char* names[] = {"Embed", "RmsNorm", "Add", "Linear", "Rope", "MlaNaive", "MlaAbsorbed", "Route",
                                "Mlp", "LocalExperts", "ExpertRows", "Combine", "LogitRows", "Logits"};
  return names[static_cast<int>(op)];
}

// The largest RMS(backend − reference) / RMS(reference) allowed: for the CPU's float tiers; for
// the tiers that round activations to bf16 (2^-9 per element, summed over a dot product's terms
// with random signs); and for CUDA, whose products run on split-bf16 GEMMs (about 2^-16) but,
// with its default fast numerics, round the routed experts' activations and absorbed attention's
// operands to bf16 as the bf16 tiers do, and with float precision do neither. Rope allows for
// the GPU's angles, computed from the frequencies on the device rather than read from the CPU's
// table. Embed, Add and Route's expert ids are exact everywhere.
double BoundOf(Op op, const std::string& backend) {
  const bool cuda = backend.rfind("cuda", 0) == 0;
  const bool cpu_bf16 = backend == "cpu-avx512bf16" || backend == "cpu-amx";
  const double products = cpu_bf16 ? 1e-2 : cuda ? 1e-4 : 1e-5;
  switch (op) {
    case Op::kEmbed: case Op::kAdd: case Op::kLogitRows: return 0;
    case Op::kRmsNorm: return 1e-6;
    case Op::kRope: return cuda ? 1e-5 : 1e-6;
    case Op::kRoute: return 1e-6;    // the weights; the ids are compared exactly
    case Op::kCombine: return 1e-6;  // a weighted sum in float on every backend
    case Op::kMlaAbsorbed: case Op::kLocalExperts: case Op::kExpertRows: return backend == "cuda" ? 1e-2 : products;
    default: return products;
  }
}

// --- Shapes ------------------------------------------------------------------------------

// DeepSeek-V3's published config.json: in the source tree, or, for a copy of the tests shipped
// elsewhere (the device bundle), in the repository the binary lies in.
std::string V3ConfigPath() {
  const std::filesystem::path rel = "cluster-configs/models/deepseek-v3/config.json";
  if (std::filesystem::exists(std::filesystem::path(DAEDALUS_SOURCE_DIR) / rel))
    return (std::filesystem::path(DAEDALUS_SOURCE_DIR) / rel).string();
  for (auto dir = std::filesystem::read_symlink("/proc/self/exe").parent_path(); dir != dir.parent_path();
       dir = dir.parent_path())
    if (std::filesystem::exists(dir / rel)) return (dir / rel).string();
  return rel.string();
}

// The shapes' latent cache: "deepseek_v3_fp8kv" is deepseek_v3's weights with the FP8 cache.
DType KvDtypeOf(const std::string& shape) { return shape == "deepseek_v3_fp8kv" ? DType::kF8E4M3 : DType::kBF16; }
std::string WeightsOf(const std::string& shape) { return shape == "deepseek_v3_fp8kv" ? "deepseek_v3" : shape; }

ModelConfig ShapeConfig(const std::string& shape) {
  if (shape == "tiny") return *PresetConfig("tiny");
  auto c = ModelConfig::Load(V3ConfigPath());
  EXPECT_TRUE(c.ok()) << c.status();
  ModelConfig v3 = *c;
  v3.num_hidden_layers = 1;
  v3.first_k_dense_replace = 0;
  v3.vocab_size = 1024;
  v3.n_routed_experts = 4;
  v3.num_experts_per_tok = 2;
  v3.n_group = 2;
  v3.topk_group = 1;
  v3.fp8 = false;
  return v3;
}

const ModelWeights& Weights(const std::string& shape_name) {
  const std::string shape = WeightsOf(shape_name);
  static std::map<std::string, std::unique_ptr<ModelWeights>> cache;
  if (auto it = cache.find(shape); it != cache.end()) return *it->second;
  const auto dir = std::filesystem::temp_directory_path() / ("daedalus-ops-" + std::to_string(::getpid()) + "-" + shape);
  MakeModelOptions options;
  options.dtype = DType::kBF16;
  EXPECT_TRUE(MakeModel(ShapeConfig(shape), options, dir.string()).ok());
  auto weights = LoadModelWeights(dir.string());
  EXPECT_TRUE(weights.ok()) << weights.status();
  std::filesystem::remove_all(dir);  // the files stay mapped
  return *(cache[shape] = std::move(*weights));
}

// --- Backends ----------------------------------------------------------------------------

constexpr int64_t kPageSize = 16;

// A backend with the page tables of its latent cache. A CPU backend runs its ops on `isa`.
struct Device {
  std::unique_ptr<PagedKvCache> pages;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<PagedKvCache> host_cache;  // the CPU backend's cache (pages is then this one)
  CpuIsa isa = CpuIsa::kGeneric;
  bool cpu = true;
};

// "cpu-generic" (the reference), "cpu-<tier>", "cuda" or "cuda-float"; an error says why it
// cannot run here.
absl::StatusOr<Device> MakeDevice(const std::string& name, const std::string& shape, const ModelWeights& w) {
  Device d;
  KvCacheOptions kv;
  kv.dtype = KvDtypeOf(shape);
  kv.page_size = kPageSize;
  kv.max_tokens = 1024;
  if (name == "cuda" || name == "cuda-float") {
    EngineOptions options;
    options.kv = kv;
    auto backend = MakeDeviceBackend(DeviceOptions{"cuda:0", 0.5, name == "cuda-float"}, w, options);
    if (!backend.ok()) return backend.status();
    d.backend = std::move(*backend);
    d.pages = std::make_unique<PagedKvCache>(w.config, options.kv);
    d.cpu = false;
    return d;
  }
  for (CpuIsa isa : {CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16, CpuIsa::kAmx}) {
    if (name != std::string("cpu-") + CpuIsaName(isa)) continue;
    const std::string missing = MissingCpuFeatures(isa);
    if (!missing.empty()) return absl::UnavailableError("this CPU lacks " + missing);
    d.isa = isa;
    d.pages = std::make_unique<PagedKvCache>(w.config, kv);
    d.backend = std::make_unique<CpuBackend>(w, *d.pages);
    return d;
  }
  return absl::InvalidArgumentError("unknown backend " + name);
}

// Runs `f` with the device's CPU tier selected (the tier is process-wide).
template <typename F>
void On(const Device& d, F&& f) {
  const CpuIsa saved = ActiveCpuIsa();
  if (d.cpu) {
    ASSERT_TRUE(SelectCpuIsa(d.isa).ok());
  }
  f();
  (void)SelectCpuIsa(saved);
}

// --- Inputs ------------------------------------------------------------------------------

std::vector<float> Random(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// Sequence A: 300 cached positions (several of the GPU decode's tiles, split over blocks),
// then one decode token (absorbed). Sequence B: 17 cached positions, then a prefill chunk of 6
// (naive). Sequence C: 9 cached positions, then a chunk of 3 attending absorbed (each row its
// own causal length). Page tables cover all 301, 23 and 12 positions.
struct Batches {
  PagedKvCache::PageTable pages_a, pages_b, pages_c;
  ForwardBatch fill, step;
  std::vector<bool> fill_absorbed{false, false, false}, step_absorbed{true, false, true};
};

void MakeBatches(PagedKvCache& cache, int64_t vocab, Batches& b) {
  ASSERT_TRUE(cache.Reserve(b.pages_a, 301).ok());
  ASSERT_TRUE(cache.Reserve(b.pages_b, 23).ok());
  ASSERT_TRUE(cache.Reserve(b.pages_c, 12).ok());
  auto tokens = [&](int64_t n, int32_t salt) {
    std::vector<int32_t> t(n);
    for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((i * 37 + salt * 101 + 3) % vocab);
    return t;
  };
  b.fill.token_ids = tokens(326, 1);
  b.fill.slices = {{&b.pages_a, 0, 300, 0, false}, {&b.pages_b, 0, 17, 300, false}, {&b.pages_c, 0, 9, 317, false}};
  b.step.token_ids = tokens(10, 2);
  b.step.slices = {{&b.pages_a, 300, 1, 0, true}, {&b.pages_b, 17, 6, 1, false}, {&b.pages_c, 9, 3, 7, false}};
  b.step.logit_rows = {0, 3, 6, 9};
}

template <typename T>
std::vector<T> Get(Backend& b, Buffer which, int64_t n) {
  auto p = b.ToHost(which, n * sizeof(T));
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return {};
  const T* v = static_cast<const T*>(*p);
  return std::vector<T>(v, v + n);
}

template <typename T>
T* Put(Backend& b, Buffer which, const std::vector<T>& v) {
  EXPECT_TRUE(b.Upload(which, v.data(), v.size() * sizeof(T)).ok());
  auto p = b.Reserve(which, v.size() * sizeof(T));
  return p.ok() ? static_cast<T*>(*p) : nullptr;
}

template <typename T>
T* Scratch(Backend& b, Buffer which, int64_t n) {
  auto p = b.Reserve(which, std::max<int64_t>(n, 1) * sizeof(T));
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? static_cast<T*>(*p) : nullptr;
}

// This rank's slots grouped by expert, as an exchange would deliver them (host memory).
ReceivedRows GroupByExpert(const std::vector<float>& x, const std::vector<int32_t>& ids, int64_t topk, int64_t hidden,
                           int64_t n_experts) {
  ReceivedRows rows;
  rows.expert_begin.assign(n_experts + 1, 0);
  for (int32_t id : ids) ++rows.expert_begin[id + 1];
  for (int64_t e = 0; e < n_experts; ++e) rows.expert_begin[e + 1] += rows.expert_begin[e];
  std::vector<int64_t> next(rows.expert_begin.begin(), rows.expert_begin.end() - 1);
  rows.headers.resize(ids.size());
  rows.x.resize(ids.size());
  for (size_t slot = 0; slot < ids.size(); ++slot) {
    const int64_t at = next[ids[slot]]++;
    rows.headers[at] = RowHeader{0, static_cast<int32_t>(slot), ids[slot], static_cast<int32_t>(hidden)};
    rows.x[at] = &x[(slot / topk) * hidden];
  }
  return rows;
}

// What an op produced, as host vectors: floats to compare by the op's bound, ints exactly.
struct Output {
  std::vector<float> floats;
  std::vector<int64_t> ints;
};

// Runs `op` on `d` from inputs drawn with fixed seeds (the same on every backend).
Output RunOp(Op op, Device& d, const ModelWeights& w) {
  const ModelConfig& c = w.config;
  const int64_t D = c.hidden_size, H = c.num_attention_heads, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t dn = c.qk_nope_head_dim, qk = dn + c.qk_rope_head_dim, dv = c.v_head_dim, dim = c.kv_cache_dim();
  const LayerWeights& layer = w.layers[0];
  const MlpWeights& mlp = layer.moe ? *layer.shared_experts : layer.dense;
  const LayerWeights& moe_layer = *std::find_if(w.layers.begin(), w.layers.end(), [](const LayerWeights& l) { return l.moe; });
  Batches batches;
  MakeBatches(*d.pages, c.vocab_size, batches);
  const ForwardBatch& batch = batches.step;
  const int64_t T = static_cast<int64_t>(batch.token_ids.size());
  Backend& b = *d.backend;
  Output out;
  auto check = [](const absl::Status& s) { EXPECT_TRUE(s.ok()) << s; };
  On(d, [&] {
    check(b.Begin(batch, batches.step_absorbed));
    switch (op) {
      case Op::kEmbed:
        check(b.Embed(w.embed_tokens, Scratch<float>(b, Buffer::kHidden, T * D)));
        out.floats = Get<float>(b, Buffer::kHidden, T * D);
        break;
      case Op::kRmsNorm: {
        float* x = Put(b, Buffer::kHidden, Random(T * D, 1));
        check(b.RmsNorm({x, &layer.input_layernorm, T, D, D, D, Scratch<float>(b, Buffer::kNormed, T * D)}));
        out.floats = Get<float>(b, Buffer::kNormed, T * D);
        break;
      }
      case Op::kAdd: {
        float* y = Put(b, Buffer::kHidden, Random(T * D, 2));
        check(b.Add(y, Put(b, Buffer::kSublayer, Random(T * D, 3)), T * D));
        out.floats = Get<float>(b, Buffer::kHidden, T * D);
        break;
      }
      case Op::kLinear: {  // two products in one call, then a third alone
        const AttentionWeights& a = layer.attn;
        const float* x = Put(b, Buffer::kNormed, Random(T * D, 4));
        const int64_t rq = a.q_a_proj->rows;
        float* qa = Scratch<float>(b, Buffer::kQa, T * rq);
        float* kv_a = Scratch<float>(b, Buffer::kKvA, T * dim);
        const LinearOp from_x[] = {{x, T, &*a.q_a_proj, qa}, {x, T, &a.kv_a_proj_with_mqa, kv_a}};
        check(b.Linear(from_x, 2));
        const LinearOp o_proj{Put(b, Buffer::kO, Random(T * H * dv, 5)), T, &a.o_proj, Scratch<float>(b, Buffer::kSublayer, T * D)};
        check(b.Linear(&o_proj, 1));
        for (auto [which, n] : {std::pair{Buffer::kQa, T * rq}, {Buffer::kKvA, T * dim}, {Buffer::kSublayer, T * D}}) {
          const std::vector<float> v = Get<float>(b, which, n);
          out.floats.insert(out.floats.end(), v.begin(), v.end());
        }
        break;
      }
      case Op::kRope: {
        float* q = Put(b, Buffer::kQ, Random(T * H * qk, 6));
        float* kv_a = Put(b, Buffer::kKvA, Random(T * dim, 7));
        check(b.Rope({q + dn, H, H * qk, qk}));
        check(b.Rope({kv_a + c.kv_lora_rank, 1, dim, dim}));
        out.floats = Get<float>(b, Buffer::kQ, T * H * qk);
        const std::vector<float> k = Get<float>(b, Buffer::kKvA, T * dim);
        out.floats.insert(out.floats.end(), k.begin(), k.end());
        break;
      }
      case Op::kMlaNaive:
      case Op::kMlaAbsorbed: {
        // The cached context first, then this batch's own latents, then attention.
        const int64_t fill = static_cast<int64_t>(batches.fill.token_ids.size());
        check(b.Begin(batches.fill, batches.fill_absorbed));
        check(b.KvWrite(0, Put(b, Buffer::kKvA, Random(fill * dim, 8))));
        check(b.Begin(batch, batches.step_absorbed));
        check(b.KvWrite(0, Put(b, Buffer::kKvA, Random(T * dim, 9))));
        const MlaOp mla{0, &layer.attn, Put(b, Buffer::kQ, Random(T * H * qk, 10)), Put(b, Buffer::kO, std::vector<float>(T * H * dv, 0.0f))};
        check(op == Op::kMlaNaive ? b.MlaNaive(mla) : b.MlaAbsorbed(mla));
        const std::vector<float> o = Get<float>(b, Buffer::kO, T * H * dv);
        // The rows of the slices the op attends.
        const bool absorbed = op == Op::kMlaAbsorbed;
        for (size_t i = 0; i < batch.slices.size(); ++i) {
          const SequenceSlice& s = batch.slices[i];
          if (batches.step_absorbed[i] == absorbed)
            out.floats.insert(out.floats.end(), o.begin() + s.offset * H * dv, o.begin() + (s.offset + s.n_tokens) * H * dv);
        }
        break;
      }
      case Op::kRoute: {
        const float* logits = Put(b, Buffer::kGateLogits, Random(T * E, 11, 4.0f));
        check(b.Route({logits, &moe_layer.e_score_correction_bias, T, Scratch<int32_t>(b, Buffer::kExpertIds, T * K),
                       Scratch<float>(b, Buffer::kExpertWeights, T * K)}));
        for (int32_t id : Get<int32_t>(b, Buffer::kExpertIds, T * K)) out.ints.push_back(id);
        out.floats = Get<float>(b, Buffer::kExpertWeights, T * K);
        break;
      }
      case Op::kMlp:
        check(b.Mlp({&mlp, Put(b, Buffer::kNormed, Random(T * D, 12)), T, Scratch<float>(b, Buffer::kSublayer, T * D)}));
        out.floats = Get<float>(b, Buffer::kSublayer, T * D);
        break;
      case Op::kLocalExperts:
      case Op::kExpertRows:
      case Op::kCombine: {
        // Every token to experts (t + k) mod E, k < K: ascending within a token where no wrap
        // occurs, each expert with rows.
        std::vector<int32_t> ids(T * K);
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t k = 0; k < K; ++k) ids[t * K + k] = static_cast<int32_t>((t + k) % E);
          std::sort(ids.begin() + t * K, ids.begin() + (t + 1) * K);
        }
        const std::vector<float> x = Random(T * D, 13), weights = Random(T * K, 14);
        const float* x_dev = Put(b, Buffer::kNormed, x);
        const float* weights_dev = Put(b, Buffer::kExpertWeights, weights);
        if (op == Op::kLocalExperts) {
          std::vector<int64_t> load;
          check(b.LocalExperts({&moe_layer, x_dev, T, Put(b, Buffer::kExpertIds, ids), weights_dev,
                                Scratch<float>(b, Buffer::kSublayer, T * D), &load}));
          out.floats = Get<float>(b, Buffer::kSublayer, T * D);
          out.ints = load;
          break;
        }
        const ReceivedRows rows = GroupByExpert(x, ids, K, D, E);
        std::vector<float> row_out(rows.rows() * D);
        std::vector<float*> out_rows;
        for (int64_t i = 0; i < rows.rows(); ++i) out_rows.push_back(&row_out[i * D]);
        float* shared = Scratch<float>(b, Buffer::kSharedOut, T * D);
        check(b.ExpertRows({&moe_layer, &rows, &out_rows, x_dev, T, shared}));
        if (op == Op::kExpertRows) {
          out.floats = row_out;
          const std::vector<float> s = Get<float>(b, Buffer::kSharedOut, T * D);
          out.floats.insert(out.floats.end(), s.begin(), s.end());
          break;
        }
        // Combine over the reference's expert outputs, so that only the sum is compared.
        std::vector<float> fixed = Random(rows.rows() * D, 15);
        std::vector<const float*> slot_rows(T * K);
        for (int64_t i = 0; i < rows.rows(); ++i) slot_rows[rows.headers[i].slot] = &fixed[i * D];
        check(b.Combine({&slot_rows, weights_dev, Put(b, Buffer::kSharedOut, Random(T * D, 16)), T,
                         Scratch<float>(b, Buffer::kSublayer, T * D)}));
        out.floats = Get<float>(b, Buffer::kSublayer, T * D);
        break;
      }
      case Op::kLogitRows: {  // also checked here against the rows picked on the host
        const std::vector<float> h = Random(T * D, 18);
        const int64_t R = static_cast<int64_t>(batch.logit_rows.size());
        check(b.LogitRows(Put(b, Buffer::kHidden, h), Scratch<float>(b, Buffer::kLogitHidden, R * D)));
        out.floats = Get<float>(b, Buffer::kLogitHidden, R * D);
        for (int64_t r = 0; r < R; ++r)
          for (int64_t i = 0; i < D; ++i)
            ASSERT_EQ(out.floats[r * D + i], h[batch.logit_rows[r] * D + i]) << "logit row " << r << ", element " << i;
        break;
      }
      case Op::kLogits: {  // the logit rows alone, as LogitRows leaves them
        const int64_t R = static_cast<int64_t>(batch.logit_rows.size());
        out.floats.resize(R * c.vocab_size);
        check(b.Logits(Put(b, Buffer::kLogitHidden, Random(R * D, 17)), w.norm, w.lm_head, out.floats.data()));
        break;
      }
    }
  });
  return out;
}

// The reference's outputs, computed once per (shape, op).
const Output& Reference(const std::string& shape, Op op) {
  static std::map<std::pair<std::string, Op>, Output> cache;
  const auto key = std::make_pair(shape, op);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  auto d = MakeDevice("cpu-generic", shape, Weights(shape));
  EXPECT_TRUE(d.ok()) << d.status();
  return cache[key] = RunOp(op, *d, Weights(shape));
}

double RelRms(const std::vector<float>& a, const std::vector<float>& ref) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (static_cast<double>(a[i]) - ref[i]) * (static_cast<double>(a[i]) - ref[i]);
    norm += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-300));
}

class BackendOps : public ::testing::TestWithParam<std::tuple<std::string, std::string, Op>> {};

TEST_P(BackendOps, MatchCpuReference) {
  const auto& [shape, backend, op] = GetParam();
  const ModelWeights& w = Weights(shape);
  auto d = MakeDevice(backend, shape, w);
  if (!d.ok()) GTEST_SKIP() << "backend " << backend << " skipped: " << d.status().message();
  const Output& ref = Reference(shape, op);
  const Output got = RunOp(op, *d, w);
  ASSERT_EQ(got.floats.size(), ref.floats.size());
  ASSERT_FALSE(ref.floats.empty());
  EXPECT_EQ(got.ints, ref.ints);
  for (float v : got.floats) ASSERT_TRUE(std::isfinite(v));
  const double limit = BoundOf(op, backend);
  const double err = RelRms(got.floats, ref.floats);
  // A wiring mistake (a wrong row, head or weight) moves a result by O(1), not by rounding.
  EXPECT_LE(err, limit) << OpName(op) << " on " << backend << ", " << shape << " shapes";
  std::cout << OpName(op) << " on " << backend << ", " << shape << ": relative RMS error " << err << " (bound " << limit
            << ")\n";
}

std::string Name(const ::testing::TestParamInfo<BackendOps::ParamType>& info) {
  std::string backend = std::get<1>(info.param);
  std::replace(backend.begin(), backend.end(), '-', '_');
  return std::get<0>(info.param) + "_" + backend + "_" + OpName(std::get<2>(info.param));
}

INSTANTIATE_TEST_SUITE_P(
    All, BackendOps,
    ::testing::Combine(::testing::Values("tiny", "deepseek_v3"),
                       ::testing::Values("cpu-avx2", "cpu-avx512", "cpu-avx512bf16", "cpu-amx", "cuda", "cuda-float"),
                       ::testing::Values(Op::kEmbed, Op::kRmsNorm, Op::kAdd, Op::kLinear, Op::kRope, Op::kMlaNaive,
                                         Op::kMlaAbsorbed, Op::kRoute, Op::kMlp, Op::kLocalExperts, Op::kExpertRows,
                                         Op::kCombine, Op::kLogitRows, Op::kLogits)),
    Name);
// The FP8 latent cache: what differs is how attention reads the cache.
INSTANTIATE_TEST_SUITE_P(
    Fp8Cache, BackendOps,
    ::testing::Combine(::testing::Values("deepseek_v3_fp8kv"),
                       ::testing::Values("cpu-avx2", "cpu-avx512", "cpu-avx512bf16", "cpu-amx", "cuda", "cuda-float"),
                       ::testing::Values(Op::kMlaNaive, Op::kMlaAbsorbed)),
    Name);

}  // namespace
}  // namespace daedalus
