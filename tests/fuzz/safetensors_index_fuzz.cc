// Bytes as a model.safetensors.index.json. Accepted shard names are plain file names.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/safetensors.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto index = daedalus::ParseSafetensorsIndex(std::string_view(reinterpret_cast<const char*>(data), size),
                                               "model.safetensors.index.json");
  if (!index.ok()) return 0;
  for (const auto& [tensor, shard] : *index) {
    FUZZ_EXPECT(!shard.empty() && shard.find('/') == std::string::npos && shard != "..");
  }
  return 0;
}
