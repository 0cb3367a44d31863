// Bytes as a whole safetensors file: the header length, the JSON header and the data. Accepted
// tensors must lie inside the bytes (ASan checks the reads) with the size their shape needs.
#include <cstddef>
#include <cstdint>

#include "core/safetensors.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tensors = daedalus::ParseSafetensors(data, size, "fuzz.safetensors");
  if (!tensors.ok()) {
    FUZZ_EXPECT(!tensors.status().message().empty());
    return 0;
  }
  volatile uint8_t sink = 0;
  for (const auto& [name, t] : *tensors) {
    FUZZ_EXPECT(t.data >= data && t.data + t.nbytes <= data + size);
    FUZZ_EXPECT(static_cast<uint64_t>(t.numel()) * daedalus::DTypeSize(t.dtype) == t.nbytes);
    if (t.nbytes > 0) sink = sink + t.data[0] + t.data[t.nbytes - 1];
    (void)t.ShapeString();
  }
  return 0;
}
