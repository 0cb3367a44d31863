// The small GPU kernels against the CPU kernels (kernels/ops.h, kernels/linear.h,
// routing/gate.h, worker/rope.h), with an error bound per op. Skipped without a GPU.
#include <cmath>
#include <numeric>

#include "core/kv_row.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gate.h"
#include "kernels/cuda/kv_write.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/silu_mul.h"
#include "kernels/cuda/unpack_weights.h"
#include "kernels/linear.h"
#include "kernels/ops.h"
#include "routing/gate.h"
#include "tests/kernels/cuda_test_util.h"
#include "worker/presets.h"
#include "worker/rope.h"
#include "worker/sampler.h"

namespace daedalus {
namespace {

using testing::DeviceArray;
using testing::MaxRelError;
using testing::RandomFloats;

TEST(CudaRmsNorm, MatchesCpu) {
  DAEDALUS_REQUIRE_GPU();
  for (int64_t n : {64, 512, 1536, 7168}) {
    const int64_t rows = 5, stride = n + 64;  // strided, as the latent's c_kv part
    const auto x = RandomFloats(rows * stride, n, 3.0f), g = RandomFloats(n, n + 1);
    std::vector<float> want(rows * n);
    RmsNorm(x.data(), g.data(), rows, n, 1e-6f, want.data(), stride, n);
    DeviceArray<float> dx(x), dg(g), dy(rows * n);
    ASSERT_TRUE(cuda::RmsNorm({dx.get(), dg.get(), dy.get(), rows, n, stride, n, 1e-6f}, nullptr).ok());
    EXPECT_LT(MaxRelError(dy.Download(), want), 1e-5) << "n " << n;  // float sums in another order
  }
}

TEST(CudaRope, MatchesRopeTableWithAndWithoutYarn) {
  DAEDALUS_REQUIRE_GPU();
  for (bool yarn : {false, true}) {
    ModelConfig c = *PresetConfig("tiny");
    c.qk_rope_head_dim = 64;
    if (yarn) c.rope_scaling = RopeScaling{40.0, 4096, 32.0, 1.0, 1.0, 1.0};  // V3's
    RopeTable table(c);
    const int64_t T = 7, H = 3, dim = 64, stride = H * 96;
    std::vector<int32_t> pos = {0, 1, 5, 100, 4095, 9000, 163839};
    auto v = RandomFloats(T * stride, 11);
    std::vector<float> want = v, cos(dim / 2), sin(dim / 2);
    for (int64_t t = 0; t < T; ++t) {
      table.Angles(pos[t], cos.data(), sin.data());
      for (int64_t h = 0; h < H; ++h) RotateInterleaved(&want[t * stride + h * 96 + 32], dim, cos.data(), sin.data());
    }
    DeviceArray<float> dv(v);
    DeviceArray<int32_t> dpos(pos);
    DeviceArray<double> dfreq(table.inv_freq());
    cuda::RopeParams p;
    p.v = dv.get() + 32, p.n_tokens = T, p.heads = H, p.token_stride = stride, p.head_stride = 96, p.dim = dim;
    p.positions = dpos.get(), p.inv_freq = dfreq.get(), p.mscale = table.mscale();
    ASSERT_TRUE(cuda::RotateInterleaved(p, nullptr).ok());
    const auto got = dv.Download();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5 * (1 + std::abs(want[i]))) << i;
  }
}

TEST(CudaSiluMul, MatchesCpu) {
  DAEDALUS_REQUIRE_GPU();
  const int64_t rows = 9, width = 2048;
  const auto gu = RandomFloats(rows * 2 * width, 3, 4.0f);
  std::vector<float> gate(rows * width), up(rows * width), want(rows * width);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < width; ++j) gate[r * width + j] = gu[r * 2 * width + j], up[r * width + j] = gu[r * 2 * width + width + j];
  SiluMulSeparate(gate.data(), up.data(), rows, width, want.data());
  DeviceArray<float> dgu(gu), dout(rows * width);
  DeviceArray<uint16_t> dbf(rows * width);
  cuda::SiluMulParams p{dgu.get(), rows, width, dout.get(), dbf.get()};
  ASSERT_TRUE(cuda::SiluMul(p, nullptr).ok());
  EXPECT_LT(MaxRelError(dout.Download(), want), 1e-6);
  const auto bf = dbf.Download();
  const auto f32 = dout.Download();
  for (size_t i = 0; i < bf.size(); ++i) ASSERT_EQ(bf[i], F32ToBf16(f32[i])) << i;
}

// A [rows, cols] BF16 weight in the CPU's panel layout and as row-major values.
struct TestWeight {
  std::vector<bf16> row_major;
  std::vector<bf16> packed;
  WeightView view;
};
TestWeight MakeWeight(int64_t rows, int64_t cols, uint64_t seed) {
  TestWeight w;
  w.row_major = testing::ToBf16(RandomFloats(rows * cols, seed, 0.05f));
  w.packed.resize(PackedElements(rows, cols));
  WeightView raw{DType::kBF16, rows, cols, w.row_major.data()};
  PackBf16(raw, w.packed.data());
  w.view = WeightView{DType::kBF16, rows, cols, nullptr, w.packed.data()};
  return w;
}

TEST(CudaUnpack, PanelBf16AndFp8ToRowMajor) {
  DAEDALUS_REQUIRE_GPU();
  const int64_t rows = 300, cols = 260;  // partial panels and partial FP8 blocks
  TestWeight w = MakeWeight(rows, cols, 5);
  DeviceArray<uint16_t> in(w.packed), out(rows * cols);
  cuda::UnpackParams u;
  u.source = cuda::WeightSource::kPanelBf16, u.in = in.get(), u.rows = rows, u.cols = cols, u.out = out.get();
  ASSERT_TRUE(cuda::UnpackWeight(u, nullptr).ok());
  EXPECT_EQ(out.Download(), w.row_major);

  std::vector<uint8_t> codes(rows * cols), packed(PackedElements(rows, cols));
  std::mt19937 rng(3);
  for (auto& c : codes) {
    c = static_cast<uint8_t>(rng() % 256);
    if ((c & 0x7f) == 0x7f) c = 0;  // NaN codes do not occur in checkpoints
  }
  std::vector<float> scales(Fp8ScaleBlocks(rows) * Fp8ScaleBlocks(cols));
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = 0.001f * (i + 1);
  WeightView fp8{DType::kF8E4M3, rows, cols, codes.data(), nullptr, scales.data()};
  PackFp8(fp8, packed.data());
  DeviceArray<uint8_t> din(packed);
  DeviceArray<float> dscales(scales);
  u.source = cuda::WeightSource::kPanelFp8, u.in = din.get(), u.scale_inv = dscales.get();
  ASSERT_TRUE(cuda::UnpackWeight(u, nullptr).ok());
  const auto got = out.Download();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      ASSERT_EQ(got[r * cols + c], F32ToBf16(fp8.at(r, c))) << r << ", " << c;  // one rounding, to bf16
}

TEST(CudaLinear, SplitActivationsMatchFloatActivations) {
  DAEDALUS_REQUIRE_GPU();
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  cuda::LinearWorkspace ws;
  for (int64_t m : {1, 7, 64, 300}) {
    const int64_t n = 512, k = 1536;
    TestWeight w = MakeWeight(n, k, m);
    const auto x = RandomFloats(m * k, m + 100);
    std::vector<float> want(m * n);
    LinearReference(x.data(), m, WeightView{DType::kBF16, n, k, w.row_major.data()}, want.data());
    DeviceArray<float> dx(x), dy(m * n);
    DeviceArray<uint16_t> dw(w.row_major);
    cuda::LinearParams p;
    p.x = dx.get(), p.m = m, p.k = k, p.ldx = k, p.w = dw.get(), p.n = n, p.ldw = k, p.y = dy.get(), p.ldy = n;
    ASSERT_TRUE(cuda::Linear(h, p, ws, nullptr).ok());
    // Split bf16 halves: ~2^-16 per activation, float accumulation.
    EXPECT_LT(MaxRelError(dy.Download(), want), 2e-4) << "m " << m;
    p.split = false;  // plain bf16 activations: ~2^-9 per activation
    ASSERT_TRUE(cuda::Linear(h, p, ws, nullptr).ok());
    EXPECT_LT(MaxRelError(dy.Download(), want), 2e-2) << "m " << m;
  }
  cublasDestroy(h);
}

TEST(CudaLinear, PerHeadBatchedBothOrientations) {
  DAEDALUS_REQUIRE_GPU();
  // The absorbed-MLA products: q_latent[h] = q_nope[h] · W_uk[h] and o[h] = o_lat[h] · W_uv[h]ᵀ,
  // both reading kv_b_proj [H·(dn+dv), rkv] in place.
  const int64_t H = 8, dn = 128, dv = 128, rkv = 512, n = 5, qk = 192;
  TestWeight kv_b = MakeWeight(H * (dn + dv), rkv, 9);
  const auto q = RandomFloats(n * H * qk, 10);
  std::vector<float> want(n * H * rkv, 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t r = 0; r < rkv; ++r) {
        double acc = 0;
        for (int64_t d = 0; d < dn; ++d) acc += double(q[i * H * qk + h * qk + d]) * Bf16ToF32(kv_b.row_major[(h * (dn + dv) + d) * rkv + r]);
        want[(i * H + h) * rkv + r] = static_cast<float>(acc);
      }
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  cuda::LinearWorkspace ws;
  DeviceArray<float> dq(q), dlat(n * H * rkv), dout(n * H * dv);
  DeviceArray<uint16_t> dw(kv_b.row_major);
  cuda::LinearParams uk;
  uk.x = dq.get(), uk.m = n, uk.k = dn, uk.ldx = H * qk, uk.x_batch_stride = qk;
  uk.w = dw.get(), uk.w_in_out = true, uk.n = rkv, uk.ldw = rkv, uk.w_batch_stride = (dn + dv) * rkv;
  uk.y = dlat.get(), uk.ldy = H * rkv, uk.y_batch_stride = rkv, uk.batch = H;
  ASSERT_TRUE(cuda::Linear(handle, uk, ws, nullptr).ok());
  const auto lat = dlat.Download();
  EXPECT_LT(MaxRelError(lat, want), 2e-4);
  std::vector<float> want_o(n * H * dv);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < dv; ++d) {
        double acc = 0;
        for (int64_t r = 0; r < rkv; ++r) acc += double(lat[(i * H + h) * rkv + r]) * Bf16ToF32(kv_b.row_major[(h * (dn + dv) + dn + d) * rkv + r]);
        want_o[(i * H + h) * dv + d] = static_cast<float>(acc);
      }
  cuda::LinearParams uv;
  uv.x = dlat.get(), uv.m = n, uv.k = rkv, uv.ldx = H * rkv, uv.x_batch_stride = rkv;
  uv.w = dw.get() + dn * rkv, uv.n = dv, uv.ldw = rkv, uv.w_batch_stride = (dn + dv) * rkv;
  uv.y = dout.get(), uv.ldy = H * dv, uv.y_batch_stride = dv, uv.batch = H;
  ASSERT_TRUE(cuda::Linear(handle, uv, ws, nullptr).ok());
  EXPECT_LT(MaxRelError(dout.Download(), want_o), 2e-4);
  cublasDestroy(handle);
}

// The gate at V3 (sigmoid, bias, top-2-sum groups), V2 (softmax, max groups, no renormalising)
// and V2-Lite (plain top-k) settings against routing/gate.h, ids and weights exactly.
TEST(CudaGate, MatchesCpuRoute) {
  DAEDALUS_REQUIRE_GPU();
  struct Case {
    int64_t E, K, groups, topk_groups;
    bool sigmoid, top2, norm;
    float scaling;
  };
  for (const Case& c : {Case{256, 8, 8, 4, true, true, true, 2.5f}, Case{160, 6, 8, 3, false, false, false, 16.0f},
                        Case{64, 6, 1, 1, false, false, false, 1.0f}, Case{16, 4, 4, 2, true, true, true, 2.5f}}) {
    GateParams g;
    g.n_routed_experts = c.E, g.num_experts_per_tok = c.K, g.n_group = c.groups, g.topk_group = c.topk_groups;
    g.sigmoid = c.sigmoid, g.group_top2_sum = c.top2, g.norm_topk_prob = c.norm, g.routed_scaling_factor = c.scaling;
    const int64_t T = 200;
    auto logits = RandomFloats(T * c.E, c.E, 2.0f);
    for (int64_t i = 0; i < 40; ++i) logits[i * 7] = logits[i * 7 + 1];  // ties
    const auto bias = RandomFloats(c.E, 99, 0.1f);
    std::vector<int32_t> want_ids(T * c.K);
    std::vector<float> want_w(T * c.K);
    Route(g, logits.data(), c.sigmoid ? bias.data() : nullptr, T, want_ids.data(), want_w.data());
    DeviceArray<float> dl(logits), db(bias), dw(T * c.K);
    DeviceArray<int32_t> di(T * c.K);
    cuda::GateParams p;
    p.logits = dl.get(), p.bias = c.sigmoid ? db.get() : nullptr, p.n_tokens = T, p.n_routed_experts = c.E;
    p.num_experts_per_tok = c.K, p.n_group = c.groups, p.topk_group = c.topk_groups, p.sigmoid = c.sigmoid;
    p.group_top2_sum = c.top2, p.norm_topk_prob = c.norm, p.routed_scaling_factor = c.scaling;
    p.expert_ids = di.get(), p.weights = dw.get();
    ASSERT_TRUE(cuda::Route(p, nullptr).ok());
    EXPECT_EQ(di.Download(), want_ids) << "E " << c.E;
    EXPECT_LT(MaxRelError(dw.Download(), want_w), 1e-5) << "E " << c.E;  // expf vs std::exp
  }
}

TEST(CudaPermute, GroupsByExpertInTokenOrderAndCombinesInSlotOrder) {
  DAEDALUS_REQUIRE_GPU();
  const int64_t T = 300, K = 8, E = 256, D = 64;
  std::mt19937 rng(1);
  std::vector<int32_t> ids(T * K);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> all(E);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::sort(all.begin(), all.begin() + K);
    std::copy(all.begin(), all.begin() + K, ids.begin() + t * K);
  }
  const auto x = RandomFloats(T * D, 2), w = RandomFloats(T * K, 3), shared = RandomFloats(T * D, 4);
  DeviceArray<int32_t> dids(ids), drow(T * K), dscratch(T * K + E);
  DeviceArray<float> dx(x), dw(w), dshared(shared), dout(T * D);
  DeviceArray<int64_t> dbegin(E + 1);
  DeviceArray<uint16_t> dgrouped(T * K * D), dgrouped_lo(T * K * D);
  cuda::PermuteParams p;
  p.expert_ids = dids.get(), p.n_tokens = T, p.topk = K, p.n_experts = E, p.x = dx.get(), p.hidden = D;
  p.group_begin = dbegin.get(), p.row_of_slot = drow.get(), p.x_grouped = dgrouped.get(), p.scratch = dscratch.get();
  p.x_grouped_lo = dgrouped_lo.get();  // the split form: the rounding remainders beside
  ASSERT_TRUE(cuda::Permute(p, nullptr).ok());
  const auto begin = dbegin.Download();
  const auto grouped_lo = dgrouped_lo.Download();
  const auto row = drow.Download();
  const auto grouped = dgrouped.Download();
  // Expected: rows of expert e are its slots in token order.
  std::vector<int64_t> next(E + 1, 0);
  for (int32_t id : ids) ++next[id + 1];
  for (int64_t e = 0; e < E; ++e) next[e + 1] += next[e];
  for (int64_t e = 0; e <= E; ++e) ASSERT_EQ(begin[e], next[e]) << "expert " << e;
  for (int64_t slot = 0; slot < T * K; ++slot) {
    const int64_t r = next[ids[slot]]++;
    ASSERT_EQ(row[slot], r) << "slot " << slot;
    for (int64_t i = 0; i < D; ++i) {
      const float v = x[(slot / K) * D + i];
      ASSERT_EQ(grouped[r * D + i], F32ToBf16(v));
      ASSERT_EQ(grouped_lo[r * D + i], F32ToBf16(v - Bf16ToF32(F32ToBf16(v))));
    }
  }
  // Combine: expert outputs y[row] = a function of the row; out = Σ_k w·y + shared.
  std::vector<float> y(T * K * D);
  for (size_t i = 0; i < y.size(); ++i) y[i] = std::sin(0.01f * i);
  DeviceArray<float> dy(y);
  cuda::UnpermuteParams u{dy.get(), drow.get(), dw.get(), dshared.get(), T, K, D, dout.get()};
  ASSERT_TRUE(cuda::Unpermute(u, nullptr).ok());
  const auto out = dout.Download();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D; ++i) {
      float sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += w[t * K + k] * y[row[t * K + k] * D + i];
      // Same order as the CPU; only fused multiply-adds may differ in the last bits.
      ASSERT_NEAR(out[t * D + i], sum + shared[t * D + i], 1e-5f * (1 + std::abs(sum))) << t << ", " << i;
    }
}

TEST(CudaArgmax, MatchesCpuArgmaxWithTies) {
  DAEDALUS_REQUIRE_GPU();
  const int64_t rows = 6, vocab = 129280;
  auto logits = RandomFloats(rows * vocab, 5);
  logits[2 * vocab + 777] = logits[2 * vocab + 70000] = 100.0f;  // tie: the lower id wins
  DeviceArray<float> dl(logits);
  DeviceArray<int32_t> dout(rows);
  ASSERT_TRUE(cuda::Argmax({dl.get(), rows, vocab, dout.get()}, nullptr).ok());
  const auto got = dout.Download();
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(got[r], Argmax(&logits[r * vocab], vocab)) << "row " << r;
}

TEST(CudaKvWrite, StoresBf16RowsAtPageAndSlot) {
  DAEDALUS_REQUIRE_GPU();
  const int64_t layers = 3, page = 4, rkv = 512, dr = 64, dim = rkv + dr, pages = 5, T = 6;
  const auto latent = RandomFloats(T * dim, 8);
  std::vector<int32_t> at_page = {4, 4, 0, 2, 2, 2}, at_slot = {0, 3, 1, 0, 1, 2};
  DeviceArray<float> dl(latent);
  DeviceArray<int32_t> dp(at_page), ds(at_slot);
  DeviceArray<uint16_t> pool(pages * layers * page * dim);
  cuda::KvWriteParams p;
  p.latent = dl.get(), p.latent_stride = dim, p.n_tokens = T, p.pages = dp.get(), p.slots = ds.get();
  p.pool = pool.get(), p.layer = 1, p.n_layers = layers, p.page_size = page, p.kv_lora_rank = rkv, p.rope_dim = dr;
  ASSERT_TRUE(cuda::KvWrite(p, nullptr).ok());
  const auto got = pool.Download();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < dim; ++i)
      ASSERT_EQ(got[((at_page[t] * layers + 1) * page + at_slot[t]) * dim + i], F32ToBf16(latent[t * dim + i]));
}

// The FP8 rows are the CPU cache's bytes exactly (core/kv_row.h's WriteKvRowFp8), on V3's row
// (656 bytes) and on rows whose scales and k_pe sit 2-byte aligned (kv_lora_rank 64 and 202,
// a partial scale block); with a zero block (scale 0) and values deep in e4m3's subnormals.
TEST(CudaKvWrite, StoresFp8RowsAsTheCpuCache) {
  DAEDALUS_REQUIRE_GPU();
  for (const auto& [rkv, dr] : {std::pair<int64_t, int64_t>{512, 64}, {64, 16}, {202, 10}}) {
    const int64_t layers = 2, page = 4, dim = rkv + dr, pages = 3, T = 5;
    const int64_t row_bytes = rkv + 4 * ((rkv + 127) / 128) + 2 * dr;
    auto latent = RandomFloats(T * dim, 9);
    for (int64_t i = 0; i < std::min<int64_t>(rkv, 128); ++i) latent[1 * dim + i] = 0.0f;  // token 1, block 0
    for (int64_t i = 1; i < std::min<int64_t>(rkv, 128); ++i) latent[2 * dim + i] *= 1e-4f;  // token 2: subnormal codes
    latent[2 * dim] = 3.0f;
    std::vector<int32_t> at_page = {2, 0, 0, 1, 2}, at_slot = {3, 0, 2, 1, 0};
    DeviceArray<float> dl(latent);
    DeviceArray<int32_t> dp(at_page), ds(at_slot);
    DeviceArray<uint8_t> pool(pages * layers * page * row_bytes);
    cuda::KvWriteParams p;
    p.latent = dl.get(), p.latent_stride = dim, p.n_tokens = T, p.pages = dp.get(), p.slots = ds.get();
    p.pool = pool.get(), p.fp8 = true, p.layer = 1, p.n_layers = layers, p.page_size = page;
    p.kv_lora_rank = rkv, p.rope_dim = dr;
    ASSERT_TRUE(cuda::KvWrite(p, nullptr).ok());
    const auto got = pool.Download();
    std::vector<uint8_t> want(row_bytes);
    for (int64_t t = 0; t < T; ++t) {
      WriteKvRowFp8(&latent[t * dim], rkv, dr, want.data());
      const uint8_t* row = &got[((at_page[t] * layers + 1) * page + at_slot[t]) * row_bytes];
      for (int64_t i = 0; i < row_bytes; ++i) ASSERT_EQ(row[i], want[i]) << "kv_lora_rank " << rkv << ", token " << t << ", byte " << i;
    }
  }
}

}  // namespace
}  // namespace daedalus
