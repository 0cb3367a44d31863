// Bytes as a cluster YAML and as a hardware YAML (cluster-configs/). Hardware named by preset
// is looked up beside a folder that does not exist, so only inline hardware can succeed.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/cluster_config.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto cluster = daedalus::ParseClusterConfig(text, "/nonexistent/clusters/fuzz.yaml");
  if (cluster.ok()) {
    FUZZ_EXPECT(cluster->nodes >= 1 && cluster->devices_per_node >= 1);
    FUZZ_EXPECT(cluster->hardware.memory_bytes > 0 && cluster->hardware.bf16_flops > 0);
    volatile int64_t devices = cluster->devices();
    (void)devices;
  }
  auto hardware = daedalus::ParseHardwareSpec(text, "/nonexistent/hardware/fuzz.yaml");
  if (hardware.ok()) FUZZ_EXPECT(hardware->memory_bandwidth > 0 && hardware->nic_latency_s >= 0);
  return 0;
}
