// MLA on the GPU against an independent double-precision reference of the attention sums
// (shared/MODEL-SEMANTICS.md), over a paged latent cache with scattered pages, in bf16 and in
// the FP8 layout (the reference reads the FP8 rows exactly, code · scale): the absorbed decode
// kernels (CUDA cores, WMMA, MMA; one split and many) and the naive prefill, on the `tiny`
// preset's shapes and DeepSeek-V3's (128 heads, kv_lora_rank 512, rope 64, nope/v 128).
// Skipped without a GPU.
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/kv_row.h"
#include "kernels/cuda/mla_decode.h"
#include "kernels/cuda/mla_prefill.h"
#include "tests/kernels/cuda_test_util.h"

namespace daedalus {
namespace {

using cuda::MlaDecodeKernel;
using testing::DeviceArray;
using testing::MaxRelErrorPerBlock;
using testing::RandomFloats;

struct Shapes {
  int64_t H, rkv, dr, dn, dv;
};
constexpr Shapes kTiny{4, 64, 16, 32, 32};
constexpr Shapes kV3{128, 512, 64, 128, 128};

// A paged pool of `layers` layers of random latent rows (bf16 or FP8), and per sequence a
// shuffled page list.
struct Pool {
  int64_t layers = 2, page_size = 64, rkv = 0, dim = 0, row_bytes = 0, pages = 0;
  bool fp8 = false;
  std::vector<uint8_t> data;
  std::vector<std::vector<int32_t>> tables;
  const uint8_t* Row(int64_t seq, int64_t layer, int64_t pos) const {
    const int64_t page = tables[seq][pos / page_size];
    return &data[((page * layers + layer) * page_size + pos % page_size) * row_bytes];
  }
  float At(int64_t seq, int64_t layer, int64_t pos, int64_t i) const {  // exactly what the row holds
    const uint8_t* row = Row(seq, layer, pos);
    bf16 v;
    if (!fp8) {
      std::memcpy(&v, row + 2 * i, 2);
      return Bf16ToF32(v);
    }
    if (i < rkv) {
      float scale;
      std::memcpy(&scale, row + rkv + 4 * (i / kKvFp8Block), 4);
      return Fp8E4M3ToF32(row[i]) * scale;
    }
    std::memcpy(&v, row + rkv + 4 * KvFp8Scales(rkv) + 2 * (i - rkv), 2);
    return Bf16ToF32(v);
  }
};
Pool MakePool(int64_t rkv, int64_t dr, bool fp8, const std::vector<int64_t>& lengths, uint64_t seed) {
  Pool p;
  p.rkv = rkv, p.dim = rkv + dr, p.fp8 = fp8;
  p.row_bytes = KvRowBytes(rkv, dr, fp8 ? DType::kF8E4M3 : DType::kBF16);
  for (int64_t len : lengths) p.pages += (len + p.page_size - 1) / p.page_size;
  const int64_t rows = p.pages * p.layers * p.page_size;
  const auto values = RandomFloats(rows * p.dim, seed);
  p.data.resize(rows * p.row_bytes);
  for (int64_t r = 0; r < rows; ++r) {
    if (fp8) {
      WriteKvRowFp8(&values[r * p.dim], rkv, dr, &p.data[r * p.row_bytes]);
    } else {
      for (int64_t i = 0; i < p.dim; ++i) {
        const bf16 v = F32ToBf16(values[r * p.dim + i]);
        std::memcpy(&p.data[r * p.row_bytes + 2 * i], &v, 2);
      }
    }
  }
  std::vector<int32_t> ids(p.pages);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
  size_t next = 0;
  for (int64_t len : lengths) {
    p.tables.emplace_back();
    for (int64_t i = 0; i < (len + p.page_size - 1) / p.page_size; ++i) p.tables.back().push_back(ids[next++]);
  }
  return p;
}

void CheckDecode(const Shapes& s, const std::vector<int64_t>& lengths, int sm_count,
                 MlaDecodeKernel kernel = MlaDecodeKernel::kCudaCores, bool fp8 = false) {
  const int64_t n = static_cast<int64_t>(lengths.size()), layer = 1;
  const Pool pool = MakePool(s.rkv, s.dr, fp8, lengths, 7 + n);
  const auto q_lat = RandomFloats(n * s.H * s.rkv, 1, 0.1f), q_pe = RandomFloats(n * s.H * s.dr, 2, 0.1f);
  const float scale = 0.07f;
  std::vector<float> want(n * s.H * s.rkv);
  for (int64_t r = 0; r < n; ++r) {
    std::vector<std::vector<double>> rows(lengths[r]);
    for (int64_t t = 0; t < lengths[r]; ++t) {
      rows[t].resize(pool.dim);
      for (int64_t i = 0; i < pool.dim; ++i) rows[t][i] = pool.At(r, layer, t, i);
    }
    for (int64_t h = 0; h < s.H; ++h) {
      std::vector<double> sc(lengths[r]);
      double max = -1e300;
      for (int64_t t = 0; t < lengths[r]; ++t) {
        double acc = 0;
        for (int64_t i = 0; i < s.rkv; ++i) acc += double(q_lat[(r * s.H + h) * s.rkv + i]) * rows[t][i];
        for (int64_t i = 0; i < s.dr; ++i) acc += double(q_pe[(r * s.H + h) * s.dr + i]) * rows[t][s.rkv + i];
        sc[t] = acc * scale;
        max = std::max(max, sc[t]);
      }
      double sum = 0;
      for (double& v : sc) sum += v = std::exp(v - max);
      for (int64_t i = 0; i < s.rkv; ++i) {
        double o = 0;
        for (int64_t t = 0; t < lengths[r]; ++t) o += sc[t] / sum * rows[t][i];
        want[(r * s.H + h) * s.rkv + i] = static_cast<float>(o);
      }
    }
  }
  int64_t max_pages = 0, max_len = 0;
  for (int64_t r = 0; r < n; ++r) {
    max_pages = std::max<int64_t>(max_pages, pool.tables[r].size());
    max_len = std::max(max_len, lengths[r]);
  }
  std::vector<int32_t> table(n * max_pages, 0), kv_len(n);
  for (int64_t r = 0; r < n; ++r) {
    std::copy(pool.tables[r].begin(), pool.tables[r].end(), table.begin() + r * max_pages);
    kv_len[r] = static_cast<int32_t>(lengths[r]);
  }
  DeviceArray<uint8_t> dpool(pool.data);
  DeviceArray<float> dq(q_lat), dpe(q_pe), dout(n * s.H * s.rkv);
  DeviceArray<int32_t> dtable(table), dlen(kv_len);
  const cuda::MlaDecodePlan plan = cuda::PlanMlaDecode(n, s.H, s.rkv, s.dr, max_len, fp8, sm_count, kernel);
  ASSERT_EQ(plan.kernel, kernel) << "the shapes do not take the " << cuda::MlaDecodeKernelName(kernel) << " kernel";
  DeviceArray<uint8_t> ws(plan.workspace_bytes);
  cuda::MlaDecodeParams p;
  p.q_latent = dq.get(), p.q_pe = dpe.get(), p.q_pe_row_stride = s.H * s.dr, p.q_pe_head_stride = s.dr;
  p.pool = dpool.get(), p.kv_fp8 = fp8, p.layer = layer, p.n_layers = pool.layers, p.page_size = pool.page_size;
  p.page_table = dtable.get(), p.max_pages = max_pages, p.kv_len = dlen.get(), p.n_rows = n, p.heads = s.H;
  p.kv_lora_rank = s.rkv, p.rope_dim = s.dr, p.scale = scale, p.out = dout.get(), p.workspace = ws.get();
  ASSERT_TRUE(cuda::MlaDecode(p, plan, nullptr).ok());
  // Per row and head: CUDA cores (float q and products, FP8 read exactly, __expf) within 1e-4
  // of that output's scale; tensor cores (q, the softmax weights and scaled FP8 values in bf16,
  // 2^-9 relative each, as FlashMLA) 1e-2.
  const bool tensor_cores = kernel != MlaDecodeKernel::kCudaCores;
  EXPECT_LT(MaxRelErrorPerBlock(dout.Download(), want, s.rkv), tensor_cores ? 1e-2 : 1e-4)
      << "heads " << s.H << ", kv_lora_rank " << s.rkv << ", " << plan.n_splits << " splits, "
      << cuda::MlaDecodeKernelName(kernel) << (fp8 ? ", fp8" : ", bf16");
}

TEST(CudaMlaDecode, TinyShapes) {
  DAEDALUS_REQUIRE_GPU();
  for (bool fp8 : {false, true}) {
    CheckDecode(kTiny, {1, 2, 63, 64, 65, 200}, 1, MlaDecodeKernel::kCudaCores, fp8);    // one split
    CheckDecode(kTiny, {1, 2, 63, 64, 65, 200}, 132, MlaDecodeKernel::kCudaCores, fp8);  // split over the sequence
  }
}

TEST(CudaMlaDecode, DeepSeekV3Shapes) {
  DAEDALUS_REQUIRE_GPU();
  for (bool fp8 : {false, true}) {
    CheckDecode(kV3, {4096, 1, 777}, 132, MlaDecodeKernel::kCudaCores, fp8);  // few rows: many splits, one empty
    CheckDecode(kV3, {300, 129}, 1, MlaDecodeKernel::kCudaCores, fp8);
  }
}

TEST(CudaMlaDecode, DeepSeekV3ShapesWmma) {
  DAEDALUS_REQUIRE_GPU();
  CheckDecode(kV3, {4096, 1, 777}, 132, MlaDecodeKernel::kWmma);
  CheckDecode(kV3, {300, 129, 31, 64}, 1, MlaDecodeKernel::kWmma);
  CheckDecode(Shapes{32, 128, 64, 128, 128}, {33, 1000}, 132, MlaDecodeKernel::kWmma);  // kv_lora_rank 128
}

TEST(CudaMlaDecode, DeepSeekV3ShapesMma) {
  DAEDALUS_REQUIRE_GPU();
  for (bool fp8 : {false, true}) {
    CheckDecode(kV3, {4096, 1, 777}, 132, MlaDecodeKernel::kMma, fp8);
    CheckDecode(kV3, {300, 129, 31, 64}, 1, MlaDecodeKernel::kMma, fp8);
    CheckDecode(Shapes{16, 512, 64, 128, 128}, {100, 2000}, 132, MlaDecodeKernel::kMma, fp8);  // V2-Lite: 16 heads
    CheckDecode(Shapes{8, 256, 32, 64, 64}, {5, 1000}, 132, MlaDecodeKernel::kMma, fp8);       // `bench`: 8 heads, rank 256
    CheckDecode(Shapes{96, 256, 32, 64, 64}, {70}, 1, MlaDecodeKernel::kMma, fp8);             // heads not a multiple of 64
  }
}

TEST(CudaMlaPrefill, MatchesNaiveReference) {
  DAEDALUS_REQUIRE_GPU();
  for (const auto& [s, fp8] : {std::pair{kTiny, false}, {kTiny, true}, {Shapes{16, 512, 64, 128, 128}, false},
                               {Shapes{16, 512, 64, 128, 128}, true}}) {
    const int64_t start = 150, n = 90, S = start + n, layer = 0, qk = s.dn + s.dr;
    const Pool pool = MakePool(s.rkv, s.dr, fp8, {S}, 3);
    const auto kv_b_f = testing::RoundedToBf16(RandomFloats(s.H * (s.dn + s.dv) * s.rkv, 4, 0.05f));
    const auto q = RandomFloats(n * s.H * qk, 5, 0.3f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(qk));
    // kv[t, h, :] = kv_b_proj · c_kv[t]
    std::vector<double> kv(S * s.H * (s.dn + s.dv));
    for (int64_t t = 0; t < S; ++t)
      for (int64_t j = 0; j < s.H * (s.dn + s.dv); ++j) {
        double acc = 0;
        for (int64_t i = 0; i < s.rkv; ++i) acc += kv_b_f[j * s.rkv + i] * double(pool.At(0, layer, t, i));
        kv[t * s.H * (s.dn + s.dv) + j] = acc;
      }
    std::vector<float> want(n * s.H * s.dv);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t h = 0; h < s.H; ++h) {
        const int64_t visible = start + t + 1;
        std::vector<double> sc(visible);
        double max = -1e300, sum = 0;
        for (int64_t u = 0; u < visible; ++u) {
          double acc = 0;
          for (int64_t d = 0; d < s.dn; ++d) acc += double(q[(t * s.H + h) * qk + d]) * kv[(u * s.H + h) * (s.dn + s.dv) + d];
          for (int64_t d = 0; d < s.dr; ++d) acc += double(q[(t * s.H + h) * qk + s.dn + d]) * pool.At(0, layer, u, s.rkv + d);
          max = std::max(max, sc[u] = acc * scale);
        }
        for (double& v : sc) sum += v = std::exp(v - max);
        for (int64_t d = 0; d < s.dv; ++d) {
          double o = 0;
          for (int64_t u = 0; u < visible; ++u) o += sc[u] / sum * kv[(u * s.H + h) * (s.dn + s.dv) + s.dn + d];
          want[(t * s.H + h) * s.dv + d] = static_cast<float>(o);
        }
      }
    DeviceArray<uint8_t> dpool(pool.data);
    DeviceArray<uint16_t> dkvb(testing::ToBf16(kv_b_f));
    DeviceArray<int32_t> dpages(pool.tables[0]);
    DeviceArray<float> dq(q), dout(n * s.H * s.dv);
    cublasHandle_t handle;
    ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
    cuda::MlaPrefillWorkspace ws;
    cuda::MlaPrefillParams p;
    p.q = dq.get(), p.q_row_stride = s.H * qk, p.n_tokens = n, p.start_pos = start;
    p.pool = dpool.get(), p.kv_fp8 = fp8, p.layer = layer, p.n_layers = pool.layers, p.page_size = pool.page_size, p.pages = dpages.get();
    p.kv_b_proj = dkvb.get(), p.heads = s.H, p.qk_nope = s.dn, p.rope = s.dr, p.v_head = s.dv, p.kv_lora_rank = s.rkv;
    p.scale = scale, p.out = dout.get(), p.out_row_stride = s.H * s.dv;
    // All heads at once, then in chunks of a few heads (their keys and values decompressed
    // chunk by chunk).
    for (const int64_t chunk_floats : {int64_t{64} << 20, S * (s.dn + s.dv) * 3}) {
      p.chunk_floats = chunk_floats;
      ASSERT_TRUE(cuda::MlaPrefill(handle, p, ws, nullptr).ok());
      // Split-bf16 decompression (~2^-16) and float GEMMs: 1e-4 of each row and head's scale.
      EXPECT_LT(MaxRelErrorPerBlock(dout.Download(), want, s.dv), 1e-4)
          << "heads " << s.H << (fp8 ? ", fp8" : ", bf16") << ", chunks of " << chunk_floats << " floats";
    }
    cublasDestroy(handle);
  }
}

}  // namespace
}  // namespace daedalus
