// Reading checkpoints in the Hugging Face layout: one `model.safetensors`, or shards
// listed by `model.safetensors.index.json`. Files are mmapped; nothing is read until used.
//
// Every structural problem (truncated file, corrupt header, tensor outside the file,
// index naming a missing shard) is an error naming the file and, where there is one,
// the tensor. Thread-safety: immutable after Open; readers may share it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace daedalus {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mmapped file; not necessarily aligned
  size_t nbytes = 0;
  std::string file;  // the shard it lives in

  int64_t numel() const;
  std::string ShapeString() const;  // "[16, 256]"
  // Drops the whole pages of this tensor's bytes from resident memory (they stay in the page
  // cache and fault back on use): for tensors copied out at load.
  void ReleaseResidentPages() const;
  // Maps this tensor's pages into the process now (MADV_POPULATE_READ; nothing where the kernel
  // lacks it), for tensors read in place: the embedding, whose rows a prompt's tokens pick at
  // random, would otherwise fault a page in for each new token.
  void MapResidentPages() const;
};

// Parses the tensors of a safetensors file held in memory (8-byte header length, JSON header,
// data). TensorInfo::data points into `bytes`, which must outlive the result; `path` names the
// file in errors. SafetensorsFile::Open is this over an mmap.
absl::StatusOr<std::map<std::string, TensorInfo>> ParseSafetensors(const uint8_t* bytes, size_t size,
                                                                   const std::string& path);

// Parses a `model.safetensors.index.json`: tensor name → shard file name. Shard names must be
// plain file names (no '/'); whether they exist is the caller's business. `path` names the
// file in errors.
absl::StatusOr<std::map<std::string, std::string>> ParseSafetensorsIndex(std::string_view text, const std::string& path);

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
};

// A checkpoint directory: config.json plus one or more safetensors files.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool Has(const std::string& name) const { return index_.count(name) > 0; }
  // The tensor, or NotFound naming the tensor and where it was looked for.
  absl::StatusOr<const TensorInfo*> Get(const std::string& name) const;
  size_t num_tensors() const { return index_.size(); }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> index_;
  std::string where_;  // for error messages: "model.safetensors" or the index file
};

}  // namespace daedalus
