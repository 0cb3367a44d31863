#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "worker/make_model.h"
#include "worker/presets.h"

namespace daedalus {

Command AddMakeModelCommand(CLI::App& app) {
  struct Flags {
    std::string preset = "tiny", dtype = "bf16", out;
    uint64_t seed = 7;
    double yarn_factor = 0;
    int64_t shard_mb = 400;
    int threads = 0;
    std::vector<std::string> overrides;
    bool config_only = false;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--preset", f->preset, "tiny | small | bench")->check(CLI::IsMember({"tiny", "small", "bench"}));
  app.add_option("--seed", f->seed, "random seed of the weights");
  app.add_option("--dtype", f->dtype, "f32 | bf16 | fp8 (F8_E4M3 projections with 128x128 block scales)")
      ->check(CLI::IsMember({"f32", "bf16", "fp8"}));
  app.add_option("--out", f->out, "output directory")->required();
  app.add_option("--yarn-factor", f->yarn_factor,
                 "add YaRN rope_scaling with this factor (original_max_position_embeddings = max / factor)");
  app.add_option("--shard-mb", f->shard_mb, "split into shards with an index above this size (MB)");
  app.add_option("--set", f->overrides,
                 "override a config.json field of the preset, KEY=JSON (e.g. q_lora_rank=null, scoring_func=softmax)");
  app.add_flag("--config-only", f->config_only, "write config.json and the tokenizer only, no weights");
  app.add_option("--threads", f->threads, "threads (default: OMP_NUM_THREADS or all cores)");
  return [f]() {
    SetThreads(f->threads);
    auto config = PresetConfig(f->preset);
    if (!config.ok()) return Fail(std::string(config.status().message()));
    if (f->yarn_factor > 0) {
      RopeScaling y;
      y.factor = f->yarn_factor;
      y.original_max_position_embeddings = static_cast<int64_t>(config->max_position_embeddings / f->yarn_factor);
      y.beta_fast = 32;
      y.beta_slow = 1;
      y.mscale = 1.0;
      y.mscale_all_dim = 1.0;
      config->rope_scaling = y;
    }
    if (!f->overrides.empty()) {
      nlohmann::ordered_json j = config->ToJson();
      for (const std::string& kv : f->overrides) {
        const size_t eq = kv.find('=');
        if (eq == std::string::npos) return Fail("--set expects KEY=VALUE, found \"" + kv + "\"");
        auto value = nlohmann::ordered_json::parse(kv.substr(eq + 1), nullptr, false);
        j[kv.substr(0, eq)] = value.is_discarded() ? nlohmann::ordered_json(kv.substr(eq + 1)) : value;
      }
      config = ModelConfig::FromJson(nlohmann::json::parse(j.dump()), "--set");
      if (!config.ok()) return Fail(std::string(config.status().message()));
    }
    MakeModelOptions options;
    options.config_only = f->config_only;
    options.seed = f->seed;
    options.dtype = f->dtype == "f32" ? DType::kF32 : f->dtype == "fp8" ? DType::kF8E4M3 : DType::kBF16;
    options.shard_bytes = f->shard_mb << 20;
    if (absl::Status s = MakeModel(*config, options, f->out); !s.ok()) return Fail(std::string(s.message()));
    std::printf("wrote %s (preset %s, %s, seed %llu)\n", f->out.c_str(), f->preset.c_str(), f->dtype.c_str(),
                static_cast<unsigned long long>(f->seed));
    return 0;
  };
}

}  // namespace daedalus
