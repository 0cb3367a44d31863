// Tiny checkpoints made once per test binary in a temporary directory.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "gtest/gtest.h"
#include "worker/make_model.h"
#include "worker/presets.h"
#include "worker/weights.h"

namespace daedalus::testing {

// The `tiny` preset at `dtype` (seed 7), loaded; `yarn` adds rope_scaling with factor 8; `heads`
// and `v_head_dim`, when not 0, replace its attention head count and value head size.
inline const ModelWeights& TinyModel(DType dtype, bool yarn = false, int64_t heads = 0, int64_t v_head_dim = 0) {
  static std::map<std::tuple<DType, bool, int64_t, int64_t>, std::unique_ptr<ModelWeights>> cache;
  auto key = std::make_tuple(dtype, yarn, heads, v_head_dim);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  const auto dir = std::filesystem::temp_directory_path() /
                   ("daedalus-test-" + std::to_string(::getpid()) + "-" + DTypeName(dtype) + (yarn ? "-yarn" : "") +
                    "-h" + std::to_string(heads) + "-v" + std::to_string(v_head_dim));
  auto config = PresetConfig("tiny");
  EXPECT_TRUE(config.ok());
  if (yarn) config->rope_scaling = RopeScaling{8.0, 512, 32.0, 1.0, 1.0, 1.0};
  if (heads != 0) config->num_attention_heads = heads;
  if (v_head_dim != 0) config->v_head_dim = v_head_dim;
  MakeModelOptions options;
  options.dtype = dtype;
  EXPECT_TRUE(MakeModel(*config, options, dir.string()).ok());
  auto weights = LoadModelWeights(dir.string());
  EXPECT_TRUE(weights.ok()) << weights.status();
  // The files stay mapped; removing the directory entries is safe on Linux.
  std::filesystem::remove_all(dir);
  return *(cache[key] = std::move(*weights));
}

}  // namespace daedalus::testing
