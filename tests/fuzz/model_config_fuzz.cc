// Bytes as a config.json: parsed and validated. An accepted config must survive its own
// ToJson (what make-model writes) and parse again.
#include <cstddef>
#include <cstdint>

#include "core/model_config.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  auto config = daedalus::ModelConfig::FromJson(j, "config.json");
  if (!config.ok()) return 0;
  FUZZ_EXPECT(config->Validate("config.json").ok());
  volatile double sink = config->softmax_scale();
  sink = sink + static_cast<double>(config->kv_cache_dim()) + static_cast<double>(config->qk_head_dim());
  for (int64_t l = 0; l < config->num_hidden_layers && l < 64; ++l) sink = sink + config->is_moe_layer(l);
  auto again = daedalus::ModelConfig::FromJson(nlohmann::json::parse(config->ToJson().dump()), "written config.json");
  if (!again.ok()) std::fprintf(stderr, "%s\n", std::string(again.status().message()).c_str());
  FUZZ_EXPECT(again.ok());
  FUZZ_EXPECT(again->vocab_size == config->vocab_size && again->num_hidden_layers == config->num_hidden_layers &&
              again->n_routed_experts == config->n_routed_experts);
  return 0;
}
