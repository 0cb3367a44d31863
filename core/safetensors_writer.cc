#include "core/safetensors_writer.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace daedalus {

void SafetensorsWriter::Add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data,
                            size_t nbytes) {
  // Keep every tensor 64-byte aligned in the data section (header padding keeps the section aligned).
  size_t begin = (data_.size() + 63) / 64 * 64;
  data_.resize(begin + nbytes);
  std::memcpy(data_.data() + begin, data, nbytes);
  entries_.push_back({name, dtype, std::move(shape), begin, begin + nbytes});
}

std::vector<std::string> SafetensorsWriter::names() const {
  std::vector<std::string> out;
  for (const auto& e : entries_) out.push_back(e.name);
  return out;
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  for (const auto& e : entries_) {
    header[e.name] = {{"dtype", DTypeName(e.dtype)}, {"shape", e.shape},
                      {"data_offsets", {e.begin, e.end}}};
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 64 != 0) text.push_back(' ');
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return absl::InternalError(absl::StrCat(path, ": cannot create: ", strerror(errno)));
  uint64_t len = text.size();
  bool ok = std::fwrite(&len, 8, 1, f) == 1 && std::fwrite(text.data(), 1, text.size(), f) == text.size() &&
            (data_.empty() || std::fwrite(data_.data(), 1, data_.size(), f) == data_.size());
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace daedalus
