// A new expert placement's experts: ReadMissingExperts reads the ones a model lacks without
// changing it, InstallExperts puts them in and frees those no longer placed, and the experts
// installed later are byte for byte the ones a full load gives.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "worker/make_model.h"
#include "worker/presets.h"
#include "worker/weights.h"

namespace daedalus {
namespace {

bool SameBytes(const WeightView& a, const WeightView& b) {
  if (a.rows != b.rows || a.cols != b.cols || a.dtype != b.dtype || (a.packed == nullptr) != (b.packed == nullptr)) {
    return false;
  }
  const void* pa = a.packed != nullptr ? a.packed : a.data;
  const void* pb = b.packed != nullptr ? b.packed : b.data;
  const size_t n = a.packed != nullptr ? PackedElements(a.rows, a.cols) * DTypeSize(a.dtype) : a.bytes();
  return std::memcmp(pa, pb, n) == 0;
}

TEST(ExpertLoading, StagedExpertsInstallAtASwitchAndTheOldOnesAreFreed) {
  for (DType dtype : {DType::kBF16, DType::kF8E4M3}) {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("daedalus-expert-loading-" + std::to_string(::getpid()) + DTypeName(dtype));
    MakeModelOptions options;
    options.dtype = dtype;
    ASSERT_TRUE(MakeModel(*PresetConfig("tiny"), options, dir.string()).ok());
    auto even = [](int64_t, int64_t e) { return e % 2 == 0; };
    auto odd = [](int64_t, int64_t e) { return e % 2 == 1; };
    auto model = LoadModelWeights(dir.string(), even);
    auto full = LoadModelWeights(dir.string());
    ASSERT_TRUE(model.ok() && full.ok());
    ModelWeights& m = **model;
    const ModelConfig& c = m.config;

    // Reading changes nothing in the model.
    auto staged = ReadMissingExperts(m, odd);
    ASSERT_TRUE(staged.ok()) << staged.status();
    int64_t moe_layers = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.is_moe_layer(l);
    EXPECT_EQ(static_cast<int64_t>(staged->experts.size()), moe_layers * c.n_routed_experts / 2);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      if (!c.is_moe_layer(l)) continue;
      for (int64_t e = 0; e < c.n_routed_experts; ++e) EXPECT_EQ(m.layers[l].experts[e].gate_proj.rows > 0, e % 2 == 0);
    }

    // The switch: the odd experts in, the even ones freed.
    InstallExperts(m, std::move(*staged), odd);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      if (!c.is_moe_layer(l)) continue;
      for (int64_t e = 0; e < c.n_routed_experts; ++e) {
        const MlpWeights& got = m.layers[l].experts[e];
        if (e % 2 == 0) {
          EXPECT_EQ(got.gate_proj.rows, 0) << l << "/" << e;
          EXPECT_FALSE(m.expert_owned.contains({l, e})) << l << "/" << e;
          continue;
        }
        const MlpWeights& want = (*full)->layers[l].experts[e];
        EXPECT_TRUE(SameBytes(got.gate_proj, want.gate_proj) && SameBytes(got.up_proj, want.up_proj) &&
                    SameBytes(got.down_proj, want.down_proj))
            << DTypeName(dtype) << " layer " << l << " expert " << e;
      }
    }
    // Both at once, back to the even experts.
    ASSERT_TRUE(LoadMissingExperts(m, even).ok());
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      if (!c.is_moe_layer(l)) continue;
      for (int64_t e = 0; e < c.n_routed_experts; ++e) EXPECT_EQ(m.layers[l].experts[e].gate_proj.rows > 0, e % 2 == 0);
    }
    std::filesystem::remove_all(dir);
  }
}

}  // namespace
}  // namespace daedalus
