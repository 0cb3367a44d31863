#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"

namespace daedalus {
namespace {

constexpr size_t kMaxHeaderBytes = 100 << 20;  // the format's own limit

absl::Status Corrupt(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat(path, ": corrupt safetensors file: ", what));
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::ShapeString() const {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

void TensorInfo::ReleaseResidentPages() const {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + nbytes) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

void TensorInfo::MapResidentPages() const {
#ifdef MADV_POPULATE_READ
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(data) + nbytes;
  if (nbytes > 0) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ);
#endif
}

absl::StatusOr<std::map<std::string, TensorInfo>> ParseSafetensors(const uint8_t* bytes, size_t size,
                                                                   const std::string& path) {
  if (size < 8) return Corrupt(path, absl::StrCat("file is ", size, " bytes, shorter than the 8-byte header length"));
  std::map<std::string, TensorInfo> tensors;
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > kMaxHeaderBytes || header_len > size - 8) {
    return Corrupt(path, absl::StrCat("header length ", header_len, " exceeds the file (", size,
                                      " bytes) or the 100 MB limit"));
  }
  // A name given twice in the header's object (the parser would keep the last one silently):
  // its keys are the keys at depth 1.
  std::string twice;
  std::set<std::string> names;
  const nlohmann::json::parser_callback_t names_once = [&](int depth, nlohmann::json::parse_event_t event,
                                                           nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && !names.insert(parsed.get<std::string>()).second &&
        twice.empty()) {
      twice = parsed.get<std::string>();
    }
    return true;
  };
  nlohmann::json header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len, names_once, false);
  if (header.is_discarded() || !header.is_object()) return Corrupt(path, "header is not a JSON object");
  if (!twice.empty()) return Corrupt(path, absl::StrCat("the header names tensor ", twice, " twice"));
  const uint8_t* data = bytes + 8 + header_len;
  const size_t data_size = size - 8 - header_len;
  for (auto& item : header.items()) {
    const std::string& name = item.key();  // not a structured binding: lambdas capture it (clang 14)
    auto& entry = item.value();
    if (name == "__metadata__") continue;
    auto bad = [&](const std::string& what) { return Corrupt(path, absl::StrCat("tensor ", name, ": ", what)); };
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets")) {
      return bad("entry needs dtype, shape and data_offsets");
    }
    if (!entry["dtype"].is_string()) return bad("dtype is not a string");
    auto dtype = ParseDType(entry["dtype"].get<std::string>());
    if (!dtype.ok()) return bad(std::string(dtype.status().message()));
    TensorInfo info;
    info.name = name;
    info.dtype = *dtype;
    info.file = path;
    if (!entry["shape"].is_array()) return bad("shape is not an array");
    for (auto& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return bad("shape holds a non-integer or negative size");
      info.shape.push_back(d.get<int64_t>());
    }
    auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      return bad("data_offsets must be two non-negative integers");
    }
    uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return bad(absl::StrCat("data [", begin, ", ", end, ") lies outside the file's ", data_size,
                              " data bytes (truncated file?)"));
    }
    uint64_t expected = 1;
    for (int64_t d : info.shape) {
      if (d != 0 && expected > (uint64_t{1} << 50) / static_cast<uint64_t>(d)) return bad("shape is too large");
      expected *= static_cast<uint64_t>(d);
    }
    expected *= DTypeSize(info.dtype);
    if (end - begin != expected) {
      return bad(absl::StrCat("shape ", info.ShapeString(), " of ", DTypeName(info.dtype), " needs ", expected,
                              " bytes, data_offsets span ", end - begin));
    }
    info.data = data + begin;
    info.nbytes = expected;
    tensors.emplace(name, std::move(info));
  }
  // No two tensors share bytes (a second name over another tensor's data would load silently).
  std::vector<const TensorInfo*> by_start;
  for (const auto& [name, info] : tensors)
    if (info.nbytes > 0) by_start.push_back(&info);
  std::sort(by_start.begin(), by_start.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->data < b->data; });
  for (size_t i = 1; i < by_start.size(); ++i) {
    const TensorInfo& a = *by_start[i - 1];
    const TensorInfo& b = *by_start[i];
    if (a.data + a.nbytes > b.data) {
      return Corrupt(path, absl::StrCat("tensors ", a.name, " and ", b.name, " overlap in the file's data (bytes ",
                                        b.data - data, " to ", a.data + a.nbytes - data, ")"));
    }
  }
  return tensors;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  // Non-blocking: opening a FIFO for reading would otherwise wait for a writer forever.
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(absl::StrCat(path, ": is not a regular file"));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_size_ = static_cast<size_t>(st.st_size);
  if (file->map_size_ < 8) {
    ::close(fd);
    return Corrupt(path, absl::StrCat("file is ", file->map_size_, " bytes, shorter than the 8-byte header length"));
  }
  file->map_ = mmap(nullptr, file->map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (file->map_ == MAP_FAILED) {
    file->map_ = nullptr;
    return absl::InternalError(absl::StrCat(path, ": mmap failed: ", strerror(errno)));
  }
  ASSIGN_OR_RETURN(file->tensors_, ParseSafetensors(static_cast<const uint8_t*>(file->map_), file->map_size_, path));
  return file;
}

absl::StatusOr<std::map<std::string, std::string>> ParseSafetensorsIndex(std::string_view text, const std::string& path) {
  nlohmann::json index = nlohmann::json::parse(text, nullptr, false);
  if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": not a JSON object with a \"weight_map\" object"));
  }
  std::map<std::string, std::string> weight_map;
  for (auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string()) return absl::DataLossError(absl::StrCat(path, ": weight_map entry ", name, " is not a file name"));
    const std::string shard = file.get<std::string>();
    // A shard is a file beside the index: no folders, so an index cannot point outside the checkpoint.
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      return absl::NotFoundError(absl::StrCat(path, " names shard \"", shard, "\" for tensor ", name,
                                              ", which is not a file name in the checkpoint's folder"));
    }
    weight_map[name] = shard;
  }
  return weight_map;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  auto ckpt = std::make_unique<Checkpoint>();
  ckpt->dir_ = dir;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;
  // Whether `p` exists, or why that cannot be told (a name too long, a loop of links).
  auto exists = [](const fs::path& p) -> absl::StatusOr<bool> {
    std::error_code ec;
    const bool there = fs::exists(p, ec);
    if (ec) return absl::FailedPreconditionError(absl::StrCat(p.string(), ": ", ec.message()));
    return there;
  };
  ASSIGN_OR_RETURN(const bool indexed, exists(index_path));
  ASSIGN_OR_RETURN(const bool single, exists(single_path));
  if (indexed) {
    ckpt->where_ = index_path.string();
    std::ifstream in(index_path);
    std::stringstream text;
    text << in.rdbuf();
    ASSIGN_OR_RETURN(weight_map, ParseSafetensorsIndex(text.str(), index_path.string()));
    for (const auto& [name, shard] : weight_map) {
      if (std::find(shard_names.begin(), shard_names.end(), shard) == shard_names.end()) shard_names.push_back(shard);
    }
    for (const auto& shard : shard_names) {
      ASSIGN_OR_RETURN(const bool there, exists(fs::path(dir) / shard));
      if (!there) {
        return absl::NotFoundError(absl::StrCat(index_path.string(), " names shard \"", shard,
                                                "\", which does not exist in ", dir));
      }
    }
  } else if (single) {
    ckpt->where_ = single_path.string();
    shard_names.push_back("model.safetensors");
  } else {
    return absl::NotFoundError(absl::StrCat(dir, ": no model.safetensors or model.safetensors.index.json"));
  }
  for (const auto& shard : shard_names) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open((fs::path(dir) / shard).string()));
    ckpt->files_.push_back(std::move(file));
  }
  for (const auto& file : ckpt->files_) {
    for (const auto& [name, info] : file->tensors()) {
      if (!weight_map.empty()) {
        auto it = weight_map.find(name);
        // A tensor the index does not list, or lists elsewhere, is not this checkpoint's.
        if (it == weight_map.end() || (fs::path(dir) / it->second).string() != file->path()) continue;
      }
      ckpt->index_[name] = &info;
    }
  }
  for (const auto& [name, shard] : weight_map) {
    if (!ckpt->index_.count(name)) {
      return absl::DataLossError(absl::StrCat(index_path.string(), " maps tensor ", name, " to ", shard,
                                              ", which does not contain it"));
    }
  }
  return ckpt;
}

absl::StatusOr<const TensorInfo*> Checkpoint::Get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return absl::NotFoundError(absl::StrCat("tensor ", name, ": missing from ", where_));
  return it->second;
}

}  // namespace daedalus
