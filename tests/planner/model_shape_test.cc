// KV cache bytes per token and parameter counts against the published figures.
#include "planner/model_shape.h"

#include <gtest/gtest.h>

#include "tests/planner/presets.h"

namespace daedalus {
namespace {

TEST(KvCache, PublishedBytesPerTokenInBf16) {
  // (kv_lora_rank + qk_rope_head_dim) x layers x 2 (DeepSeek-V2 report §2.1.4).
  EXPECT_EQ(KvBytesPerToken(PresetModel("deepseek-v3"), DType::kBF16), 70272);
  EXPECT_EQ(KvBytesPerToken(PresetModel("deepseek-v2"), DType::kBF16), 69120);
  EXPECT_EQ(KvBytesPerToken(PresetModel("deepseek-v2-lite"), DType::kBF16), 31104);
}

TEST(KvCache, FlashMlaFp8Format) {
  // 512 B FP8 latent + 16 B float32 scales + 128 B BF16 RoPE part = 656 B per layer.
  EXPECT_EQ(KvBytesPerToken(PresetModel("deepseek-v3"), DType::kF8E4M3), 656 * 61);
}

TEST(KvCache, MhaEquivalentAndV2ReportReduction) {
  const ModelConfig v2 = PresetModel("deepseek-v2");
  // MHA with V2's 128 heads of 128: 2 x 128 x 128 x 60 elements.
  EXPECT_EQ(MhaKvBytesPerToken(v2, 2.0), 2 * 128 * 128 * 60 * 2);
  EXPECT_LT(static_cast<double>(KvBytesPerToken(v2, DType::kBF16)) / MhaKvBytesPerToken(v2, 2.0), 0.02);
  // The report's 93.3% is against DeepSeek 67B (95 layers, GQA with 8 KV heads of 128, BF16),
  // with V2's cache deployed at 6 bits per element on average (report §3.2.3).
  const double deepseek_67b = static_cast<double>(GqaKvBytesPerToken(95, 8, 128, 2.0));
  EXPECT_EQ(deepseek_67b, 389120);
  const double v2_deployed = KvBytesPerToken(v2, DType::kBF16) * 6.0 / 16.0;
  EXPECT_NEAR(1.0 - v2_deployed / deepseek_67b, 0.933, 0.0005);
}

TEST(ModelShape, ParameterCountsMatchThePublishedTotals) {
  const ModelConfig v3 = PresetModel("deepseek-v3");
  const ModelShape s = ShapeOf(v3);
  // q_a 7168x1536, q_b 1536x(128x192), kv_a 7168x576, kv_b 512x(128x256), o (128x128)x7168.
  EXPECT_EQ(s.attention_params, 11010048 + 37748736 + 4128768 + 16777216 + 117440512);
  EXPECT_EQ(s.expert_params, 3 * 7168 * 2048);
  EXPECT_EQ(s.dense_layers, 3);
  EXPECT_EQ(s.moe_layers, 58);
  // The MTP module apart: one more MoE layer (MLA, 256 routed and 1 shared expert, router),
  // eh_proj 14336 -> 7168, and norms (enorm, hnorm, the head's, the layer's four): DeepSeek's
  // README_WEIGHTS.md gives "11.5B unique parameters" (the embedding and head are shared).
  const double mtp = 187105280.0 + 257 * 3 * 7168.0 * 2048 + 256 * 7168.0 + 2 * 7168.0 * 7168 +
                     (3 * 7168 + 2 * 7168 + 512 + 1536);
  EXPECT_EQ(s.mtp_params(256, 1), mtp);
  EXPECT_NEAR(s.mtp_params(256, 1) / 11.5e9, 1.0, 0.015);
  // 671B for V3 (without its MTP module), 236B for V2, 15.7B for V2-Lite.
  EXPECT_NEAR(s.total_params(256, 1) / 671e9, 1.0, 0.005);
  const ModelConfig v2 = PresetModel("deepseek-v2");
  EXPECT_NEAR(ShapeOf(v2).total_params(160, 2) / 236e9, 1.0, 0.005);
  const ModelConfig lite = PresetModel("deepseek-v2-lite");
  EXPECT_NEAR(ShapeOf(lite).total_params(64, 2) / 15.7e9, 1.0, 0.01);
}

TEST(ModelShape, WeightBytesIncludeBlockScales) {
  EXPECT_EQ(WeightBytes(DType::kBF16), 2.0);
  EXPECT_DOUBLE_EQ(WeightBytes(DType::kF8E4M3), 1.0 + 4.0 / 16384.0);
}

}  // namespace
}  // namespace daedalus
