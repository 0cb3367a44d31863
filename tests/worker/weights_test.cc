// The absorbed-decode weights: per-head copies of kv_b_proj that hold its values exactly.
#include "worker/weights.h"

#include "gtest/gtest.h"
#include "tests/worker/test_models.h"

namespace daedalus {
namespace {

using testing::TinyModel;

// Every element of every head's W_uk (transposed) and W_uv, held in `uk` and `uv`, against
// kv_b_proj's own, compared as floats: equal where the copy is in kv_b_proj's dtype, else
// kv_b_proj's value rounded to bf16.
void ExpectHeadsHold(const ModelWeights& w, DType uk, DType uv) {
  const ModelConfig& c = w.config;
  const int64_t dn = c.qk_nope_head_dim, dv = c.v_head_dim, r = c.kv_lora_rank;
  for (const LayerWeights& layer : w.layers) {
    const AttentionWeights& a = layer.attn;
    for (int64_t h = 0; h < c.num_attention_heads; ++h) {
      ASSERT_EQ(a.w_uk_t[h].dtype, uk) << "head " << h;
      ASSERT_EQ(a.w_uv[h].dtype, uv) << "head " << h;
      auto held = [&](const WeightView& copy, int64_t i, int64_t j, int64_t kv_b_row, int64_t kv_b_col) {
        const float from = a.kv_b_proj.at(kv_b_row, kv_b_col);
        return copy.at(i, j) == (copy.dtype == a.kv_b_proj.dtype ? from : Bf16ToF32(F32ToBf16(from)));
      };
      for (int64_t i = 0; i < r; ++i)
        for (int64_t j = 0; j < dn; ++j)
          ASSERT_TRUE(held(a.w_uk_t[h], i, j, h * (dn + dv) + j, i)) << "W_uk head " << h << " (" << i << ", " << j << ")";
      for (int64_t i = 0; i < dv; ++i)
        for (int64_t j = 0; j < r; ++j)
          ASSERT_TRUE(held(a.w_uv[h], i, j, h * (dn + dv) + dn + i, j)) << "W_uv head " << h << " (" << i << ", " << j << ")";
    }
  }
}

TEST(AbsorbedHeads, Bf16CopiesAreExact) { ExpectHeadsHold(TinyModel(DType::kBF16), DType::kBF16, DType::kBF16); }

// tiny's heads are 32 + 32 rows of kv_b_proj: two to a 128-row scale block, so each copy's
// blocks take one scale each, and the copies keep the FP8 codes (half the bytes of bf16).
TEST(AbsorbedHeads, Fp8CopiesKeepTheCodesWhereScaleBlocksFallOnHeads) {
  ExpectHeadsHold(TinyModel(DType::kF8E4M3), DType::kF8E4M3, DType::kF8E4M3);
}

// With a value head of 40, heads are 72 rows: each head's 32 k rows lie in one block, but head
// 1's 40 v rows (104-143) straddle rows 127 and 128, so W_uv's copies are bf16 (code × scale).
TEST(AbsorbedHeads, Fp8CopiesAreBf16WhereHeadsStraddleScaleBlocks) {
  ExpectHeadsHold(TinyModel(DType::kF8E4M3, false, 0, 40), DType::kF8E4M3, DType::kBF16);
}

}  // namespace
}  // namespace daedalus
