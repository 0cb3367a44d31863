// Writing safetensors files (used by make-model and by tests that build checkpoints).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/dtype.h"

namespace daedalus {

class SafetensorsWriter {
 public:
  // Takes a copy of `data` (`nbytes` must match shape × dtype size).
  void Add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data, size_t nbytes);
  std::vector<std::string> names() const;
  // Writes the file: 8-byte header length, JSON header padded to 8 bytes, data.
  absl::Status Write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    size_t begin, end;
  };
  std::vector<Entry> entries_;
  std::vector<uint8_t> data_;
};

}  // namespace daedalus
