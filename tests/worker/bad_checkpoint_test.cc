// Bad checkpoints are errors, never crashes: each corruption of a valid tiny checkpoint must make
// LoadModelWeights return a non-OK status whose message names the file, the tensor (where there
// is one) and what was expected or found.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/safetensors.h"
#include "core/safetensors_writer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/make_model.h"
#include "worker/presets.h"
#include "worker/weights.h"

namespace daedalus {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// File helpers

std::string ReadBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteBytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void Truncate(const fs::path& path, size_t size) { fs::resize_file(path, size); }

// The header of a safetensors file, and the data section after it.
struct Parsed {
  json header;
  std::string data;
};

Parsed ParseSafetensors(const fs::path& path) {
  const std::string bytes = ReadBytes(path);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  Parsed p;
  p.header = json::parse(bytes.substr(8, len));
  p.data = bytes.substr(8 + len);
  return p;
}

// Writes a safetensors file from a header's text (any text: JSON can't hold a key twice) and a
// data section.
void WriteSafetensorsText(const fs::path& path, std::string text, const std::string& data) {
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  uint64_t len = text.size();
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &len, 8);
  WriteBytes(path, bytes + text + data);
}

// Writes a safetensors file from a (possibly inconsistent) header and a data section.
void WriteSafetensors(const fs::path& path, const json& header, const std::string& data) {
  WriteSafetensorsText(path, header.dump(), data);
}

// Rewrites `path` tensor by tensor through SafetensorsWriter. `edit` sees every tensor and adds
// what should be stored for it (nothing drops it); AddCopy stores it unchanged.
void AddCopy(SafetensorsWriter& w, const TensorInfo& t) { w.Add(t.name, t.dtype, t.shape, t.data, t.nbytes); }

void RewriteTensors(const fs::path& path, const std::function<void(const TensorInfo&, SafetensorsWriter&)>& edit) {
  SafetensorsWriter writer;
  {
    auto file = SafetensorsFile::Open(path.string());
    ASSERT_TRUE(file.ok()) << file.status();
    for (const auto& [name, t] : (*file)->tensors()) edit(t, writer);
  }
  const fs::path tmp = path.string() + ".tmp";
  ASSERT_TRUE(writer.Write(tmp.string()).ok());
  fs::rename(tmp, path);
}

void DropTensor(const fs::path& path, const std::string& name) {
  bool found = false;
  RewriteTensors(path, [&](const TensorInfo& t, SafetensorsWriter& w) {
    if (t.name == name) {
      found = true;
      return;
    }
    AddCopy(w, t);
  });
  ASSERT_TRUE(found) << name << " is not in " << path;
}

void EditJson(const fs::path& path, const std::function<void(json&)>& edit) {
  json j = json::parse(ReadBytes(path));
  edit(j);
  WriteBytes(path, j.dump(2));
}

void CopyDir(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}

std::vector<std::string> Shards(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("model-", 0) == 0 && e.path().extension() == ".safetensors") out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The shard of a sharded checkpoint that holds `tensor`, by the index.
std::string ShardOf(const fs::path& dir, const std::string& tensor) {
  json index = json::parse(ReadBytes(dir / "model.safetensors.index.json"));
  return index["weight_map"].value(tensor, std::string());
}

// ---------------------------------------------------------------------------------------------
// Assertions

// The load fails, and the message contains every one of `parts`.
::testing::AssertionResult FailsWith(const std::string& dir, std::initializer_list<std::string> parts) {
  auto loaded = LoadModelWeights(dir);
  if (loaded.ok()) return ::testing::AssertionFailure() << "LoadModelWeights(" << dir << ") succeeded";
  const std::string message(loaded.status().message());
  for (const std::string& part : parts) {
    if (message.find(part) == std::string::npos) {
      return ::testing::AssertionFailure() << "error message lacks \"" << part << "\": " << message;
    }
  }
  return ::testing::AssertionSuccess() << message;
}

// ---------------------------------------------------------------------------------------------
// Fixture: valid tiny checkpoints (single-file BF16, sharded BF16, single-file FP8) made once;
// each test corrupts a fresh copy.

class BadCheckpointTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::random_device rd;
    root_ = fs::temp_directory_path() /
            ("daedalus_bad_checkpoint_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    fs::create_directories(root_);
    auto config = PresetConfig("tiny");
    ASSERT_TRUE(config.ok());
    MakeModelOptions options;
    options.dtype = DType::kBF16;
    ASSERT_TRUE(MakeModel(*config, options, (root_ / "base_bf16").string()).ok());
    options.shard_bytes = 1 << 20;
    ASSERT_TRUE(MakeModel(*config, options, (root_ / "base_sharded").string()).ok());
    options.shard_bytes = int64_t{400} << 20;
    options.dtype = DType::kF8E4M3;
    ASSERT_TRUE(MakeModel(*config, options, (root_ / "base_fp8").string()).ok());
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // A fresh copy of base checkpoint `base` for this test to corrupt.
  fs::path Fresh(const std::string& base) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    const fs::path dir = root_ / (std::string(info->name()) + "_" + std::to_string(copies_++));
    CopyDir(root_ / base, dir);
    return dir;
  }
  static fs::path Base(const std::string& base) { return root_ / base; }

  static fs::path root_;
  int copies_ = 0;
};

fs::path BadCheckpointTest::root_;

// ---------------------------------------------------------------------------------------------
// The valid checkpoints load

TEST_F(BadCheckpointTest, ValidCheckpointsLoad) {
  const fs::path single = Base("base_bf16"), sharded = Base("base_sharded");
  ASSERT_TRUE(fs::exists(single / "model.safetensors"));
  ASSERT_TRUE(fs::exists(sharded / "model.safetensors.index.json"));
  ASSERT_FALSE(fs::exists(sharded / "model.safetensors"));
  ASSERT_GE(Shards(sharded).size(), 2u);

  auto a = LoadModelWeights(single.string());
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = LoadModelWeights(sharded.string());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*a)->config.vocab_size, 512);
  EXPECT_EQ((*a)->layers.size(), 3u);
  EXPECT_FALSE((*a)->layers[0].moe);
  EXPECT_TRUE((*a)->layers[1].moe);
  EXPECT_EQ((*a)->layers[1].experts.size(), 16u);
  EXPECT_EQ((*a)->embed_tokens.dtype, DType::kBF16);
  // Same seed: the sharded checkpoint holds the same weights.
  EXPECT_EQ((*a)->checkpoint->num_tensors(), (*b)->checkpoint->num_tensors());
  for (int64_t r : {0, 17, 511}) {
    for (int64_t c : {0, 5, 127}) {
      EXPECT_EQ((*a)->embed_tokens.at(r, c), (*b)->embed_tokens.at(r, c));
      EXPECT_EQ((*a)->lm_head.at(r, c), (*b)->lm_head.at(r, c));
    }
  }
  EXPECT_EQ((*a)->layers[2].experts[15].down_proj.at(3, 7), (*b)->layers[2].experts[15].down_proj.at(3, 7));
}

TEST_F(BadCheckpointTest, ValidFp8CheckpointLoadsAndStaysFp8) {
  const fs::path fp8 = Base("base_fp8");
  auto f = SafetensorsFile::Open((fp8 / "model.safetensors").string());
  ASSERT_TRUE(f.ok()) << f.status();
  const auto& tensors = (*f)->tensors();
  ASSERT_TRUE(tensors.count("model.layers.0.self_attn.q_a_proj.weight"));
  EXPECT_EQ(tensors.at("model.layers.0.self_attn.q_a_proj.weight").dtype, DType::kF8E4M3);
  ASSERT_TRUE(tensors.count("model.layers.0.self_attn.q_a_proj.weight_scale_inv"));
  EXPECT_EQ(tensors.at("model.layers.0.self_attn.q_a_proj.weight_scale_inv").dtype, DType::kF32);

  auto q = LoadModelWeights(fp8.string());
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_TRUE((*q)->config.fp8);
  auto ref = LoadModelWeights(Base("base_bf16").string());
  ASSERT_TRUE(ref.ok()) << ref.status();
  // Kept as FP8 codes with block scales, close to the BF16 checkpoint of the same seed (e4m3
  // keeps 3 mantissa bits).
  for (const auto& [w, r] : {std::pair{&(*q)->layers[0].attn.q_a_proj.value(), &(*ref)->layers[0].attn.q_a_proj.value()},
                             std::pair{&(*q)->layers[1].experts[3].down_proj, &(*ref)->layers[1].experts[3].down_proj},
                             std::pair{&(*q)->layers[2].attn.o_proj, &(*ref)->layers[2].attn.o_proj}}) {
    EXPECT_EQ(w->dtype, DType::kF8E4M3);
    EXPECT_NE(w->scale_inv, nullptr);
    ASSERT_EQ(w->rows, r->rows);
    ASSERT_EQ(w->cols, r->cols);
    double err = 0, mag = 0;
    for (int64_t i = 0; i < w->rows; ++i) {
      for (int64_t j = 0; j < w->cols; ++j) {
        err += std::fabs(w->at(i, j) - r->at(i, j));
        mag += std::fabs(r->at(i, j));
      }
    }
    EXPECT_GT(mag, 0);
    EXPECT_LT(err / mag, 0.05);
  }
}

// ---------------------------------------------------------------------------------------------
// Missing tensors

TEST_F(BadCheckpointTest, MissingTensorSingleFile) {
  const fs::path dir = Fresh("base_bf16");
  DropTensor(dir / "model.safetensors", "model.layers.1.mlp.gate.weight");
  EXPECT_TRUE(FailsWith(dir.string(), {"model.layers.1.mlp.gate.weight", (dir / "model.safetensors").string(),
                                       "missing"}));
}

TEST_F(BadCheckpointTest, MissingTensorFromShardTheIndexNames) {
  const fs::path dir = Fresh("base_sharded");
  const std::string tensor = "model.layers.1.mlp.gate.weight";
  const std::string shard = ShardOf(dir, tensor);
  ASSERT_FALSE(shard.empty());
  DropTensor(dir / shard, tensor);
  EXPECT_TRUE(FailsWith(dir.string(), {tensor, shard, "model.safetensors.index.json"}));
}

TEST_F(BadCheckpointTest, MissingTensorFromShardAndIndex) {
  const fs::path dir = Fresh("base_sharded");
  const std::string tensor = "model.layers.2.self_attn.kv_a_layernorm.weight";
  const std::string shard = ShardOf(dir, tensor);
  ASSERT_FALSE(shard.empty());
  DropTensor(dir / shard, tensor);
  EditJson(dir / "model.safetensors.index.json", [&](json& j) { j["weight_map"].erase(tensor); });
  EXPECT_TRUE(FailsWith(dir.string(), {tensor, "model.safetensors.index.json", "missing"}));
}

TEST_F(BadCheckpointTest, NoWeightFilesAtAll) {
  const fs::path dir = Fresh("base_bf16");
  fs::remove(dir / "model.safetensors");
  EXPECT_TRUE(FailsWith(dir.string(), {dir.string(), "model.safetensors"}));
}

// ---------------------------------------------------------------------------------------------
// Wrong shape or dtype

TEST_F(BadCheckpointTest, WrongShape) {
  const fs::path dir = Fresh("base_bf16");
  // Same bytes, another shape: the file is self-consistent, only the model disagrees.
  RewriteTensors(dir / "model.safetensors", [](const TensorInfo& t, SafetensorsWriter& w) {
    if (t.name == "model.layers.1.mlp.gate.weight") {
      ASSERT_EQ(t.shape, (std::vector<int64_t>{16, 128}));
      w.Add(t.name, t.dtype, {8, 256}, t.data, t.nbytes);
    } else {
      AddCopy(w, t);
    }
  });
  EXPECT_TRUE(FailsWith(dir.string(), {"model.layers.1.mlp.gate.weight", (dir / "model.safetensors").string(),
                                       "expected shape [16, 128], found [8, 256]"}));
}

TEST_F(BadCheckpointTest, WrongShapeInShard) {
  const fs::path dir = Fresh("base_sharded");
  const std::string tensor = "model.layers.2.mlp.experts.9.up_proj.weight";  // [64, 128]
  const std::string shard = ShardOf(dir, tensor);
  ASSERT_FALSE(shard.empty());
  RewriteTensors(dir / shard, [&](const TensorInfo& t, SafetensorsWriter& w) {
    if (t.name == tensor) w.Add(t.name, t.dtype, {128, 64}, t.data, t.nbytes);
    else AddCopy(w, t);
  });
  EXPECT_TRUE(FailsWith(dir.string(), {tensor, (dir / shard).string(), "expected shape [64, 128], found [128, 64]"}));
}

TEST_F(BadCheckpointTest, Fp8NormIsRejected) {
  const fs::path dir = Fresh("base_bf16");
  const std::string tensor = "model.layers.0.input_layernorm.weight";  // [128] BF16
  RewriteTensors(dir / "model.safetensors", [&](const TensorInfo& t, SafetensorsWriter& w) {
    if (t.name == tensor) w.Add(t.name, DType::kF8E4M3, t.shape, t.data, static_cast<size_t>(t.numel()));
    else AddCopy(w, t);
  });
  EXPECT_TRUE(FailsWith(dir.string(), {tensor, (dir / "model.safetensors").string(), "F8_E4M3"}));
}

// ---------------------------------------------------------------------------------------------
// Truncated files

TEST_F(BadCheckpointTest, TruncatedSingleFile) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  const Parsed p = ParseSafetensors(file);
  const size_t size = fs::file_size(file), cut = size / 2;
  const size_t data_left = cut - (size - p.data.size());
  Truncate(file, cut);
  auto loaded = LoadModelWeights(dir.string());
  ASSERT_FALSE(loaded.ok());
  const std::string message(loaded.status().message());
  EXPECT_NE(message.find(file.string()), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;
  // It names a tensor that does lie past the cut.
  bool names_cut_tensor = false;
  for (const auto& [name, entry] : p.header.items()) {
    if (name == "__metadata__") continue;
    if (entry["data_offsets"][1].get<uint64_t>() > data_left &&
        message.find("tensor " + name + ":") != std::string::npos) {
      names_cut_tensor = true;
    }
  }
  EXPECT_TRUE(names_cut_tensor) << message;
}

TEST_F(BadCheckpointTest, TruncatedShard) {
  const fs::path dir = Fresh("base_sharded");
  const std::vector<std::string> shards = Shards(dir);
  ASSERT_GE(shards.size(), 2u);
  const fs::path file = dir / shards[1];
  Truncate(file, fs::file_size(file) / 2);
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), "tensor ", "truncated"}));
}

TEST_F(BadCheckpointTest, TruncatedInsideHeader) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  Truncate(file, 100);
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), "header length"}));
}

TEST_F(BadCheckpointTest, TruncatedBelowHeaderLength) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  Truncate(file, 5);
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), "5 bytes"}));
  Truncate(file, 0);
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), "0 bytes"}));
}

// ---------------------------------------------------------------------------------------------
// Corrupt headers

TEST_F(BadCheckpointTest, GarbageHeaderJson) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  std::string bytes = ReadBytes(file);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  for (size_t i = 8; i < 8 + len; ++i) bytes[i] = static_cast<char>("{\"x\": [garbage"[(i - 8) % 14]);
  WriteBytes(file, bytes);
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), "corrupt", "JSON"}));
}

TEST_F(BadCheckpointTest, HeaderIsJsonButNotAnObject) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  WriteSafetensors(file, json::array({1, 2, 3}), ParseSafetensors(file).data);
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), "not a JSON object"}));
}

TEST_F(BadCheckpointTest, HeaderLengthLargerThanFile) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  for (uint64_t len : {static_cast<uint64_t>(fs::file_size(file)), uint64_t{1} << 40, ~uint64_t{0}}) {
    std::string bytes = ReadBytes(file);
    std::memcpy(bytes.data(), &len, 8);
    WriteBytes(file, bytes);
    EXPECT_TRUE(FailsWith(dir.string(), {file.string(), "header length " + std::to_string(len), "exceeds"}));
  }
}

TEST_F(BadCheckpointTest, DataOffsetsInconsistentWithShape) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  Parsed p = ParseSafetensors(file);
  const std::string tensor = "model.layers.2.self_attn.o_proj.weight";  // [128, 128] BF16: 32768 bytes
  ASSERT_TRUE(p.header.contains(tensor));
  p.header[tensor]["shape"] = {128, 256};
  WriteSafetensors(file, p.header, p.data);
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), tensor, "[128, 256]", "65536 bytes", "span 32768"}));
}

TEST_F(BadCheckpointTest, DataOffsetsReversed) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  Parsed p = ParseSafetensors(file);
  const std::string tensor = "model.norm.weight";
  ASSERT_TRUE(p.header.contains(tensor));
  const uint64_t begin = p.header[tensor]["data_offsets"][0], end = p.header[tensor]["data_offsets"][1];
  p.header[tensor]["data_offsets"] = {end, begin};
  WriteSafetensors(file, p.header, p.data);
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), tensor}));
}

TEST_F(BadCheckpointTest, DataOffsetsPastTheEnd) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  Parsed p = ParseSafetensors(file);
  const std::string tensor = "model.norm.weight";  // [128] BF16
  p.header[tensor]["data_offsets"] = {p.data.size() - 64, p.data.size() + 192};
  WriteSafetensors(file, p.header, p.data);
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), tensor, "outside"}));
}

TEST_F(BadCheckpointTest, HeaderEntryMalformed) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  const Parsed original = ParseSafetensors(file);
  const std::string tensor = "model.layers.0.self_attn.kv_b_proj.weight";
  const std::vector<std::pair<std::function<void(json&)>, std::string>> cases = {
      {[](json& e) { e["dtype"] = "F16"; }, "F16"},
      {[](json& e) { e["dtype"] = 7; }, "dtype"},
      {[](json& e) { e.erase("shape"); }, "shape"},
      {[](json& e) { e["shape"] = {128, -64}; }, "negative"},
      {[](json& e) { e["shape"] = "128x64"; }, "shape"},
      {[](json& e) { e["data_offsets"] = {0}; }, "data_offsets"},
      {[](json& e) { e["data_offsets"] = {-1, 5}; }, "data_offsets"},
      {[](json& e) { e["data_offsets"] = {0.5, 16384.5}; }, "data_offsets"},
      {[](json& e) { e = "not an entry"; }, "dtype, shape and data_offsets"},
  };
  for (const auto& [edit, expected] : cases) {
    json header = original.header;
    edit(header[tensor]);
    WriteSafetensors(file, header, original.data);
    EXPECT_TRUE(FailsWith(dir.string(), {file.string(), tensor, expected})) << header[tensor].dump();
  }
}

// ---------------------------------------------------------------------------------------------
// Index problems

TEST_F(BadCheckpointTest, IndexNamesMissingShard) {
  const fs::path dir = Fresh("base_sharded");
  const std::vector<std::string> shards = Shards(dir);
  ASSERT_GE(shards.size(), 2u);
  fs::remove(dir / shards.back());
  EXPECT_TRUE(FailsWith(dir.string(), {"model.safetensors.index.json", shards.back(), "does not exist"}));
}

TEST_F(BadCheckpointTest, IndexNamesUnknownFile) {
  const fs::path dir = Fresh("base_sharded");
  EditJson(dir / "model.safetensors.index.json",
           [](json& j) { j["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors"; });
  EXPECT_TRUE(FailsWith(dir.string(), {"model.safetensors.index.json", "model-00009-of-00009.safetensors",
                                       "does not exist"}));
}

TEST_F(BadCheckpointTest, IndexMapsTensorToWrongShard) {
  const fs::path dir = Fresh("base_sharded");
  const std::vector<std::string> shards = Shards(dir);
  const std::string tensor = "model.embed_tokens.weight";
  const std::string right = ShardOf(dir, tensor);
  const std::string wrong = right == shards.front() ? shards.back() : shards.front();
  EditJson(dir / "model.safetensors.index.json", [&](json& j) { j["weight_map"][tensor] = wrong; });
  EXPECT_TRUE(FailsWith(dir.string(), {"model.safetensors.index.json", tensor, wrong}));
}

TEST_F(BadCheckpointTest, IndexCorrupt) {
  const fs::path dir = Fresh("base_sharded");
  const fs::path index = dir / "model.safetensors.index.json";
  const std::string text = ReadBytes(index);
  WriteBytes(index, text.substr(0, text.size() / 2));
  EXPECT_TRUE(FailsWith(dir.string(), {index.string(), "weight_map"}));
  WriteBytes(index, R"({"metadata": {}, "weight_map": {"model.norm.weight": 3}})");
  EXPECT_TRUE(FailsWith(dir.string(), {index.string(), "model.norm.weight"}));
}

// ---------------------------------------------------------------------------------------------
// config.json problems

TEST_F(BadCheckpointTest, UnsupportedModelType) {
  const fs::path dir = Fresh("base_bf16");
  EditJson(dir / "config.json", [](json& j) { j["model_type"] = "llama"; });
  EXPECT_TRUE(FailsWith(dir.string(), {(dir / "config.json").string(), "model_type", "\"llama\"", "deepseek_v3"}));
}

TEST_F(BadCheckpointTest, TruncatedConfig) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path config = dir / "config.json";
  const std::string text = ReadBytes(config);
  WriteBytes(config, text.substr(0, text.size() / 2));
  EXPECT_TRUE(FailsWith(dir.string(), {config.string(), "JSON"}));
  WriteBytes(config, "");
  EXPECT_TRUE(FailsWith(dir.string(), {config.string(), "JSON"}));
}

TEST_F(BadCheckpointTest, MissingConfig) {
  const fs::path dir = Fresh("base_bf16");
  fs::remove(dir / "config.json");
  EXPECT_TRUE(FailsWith(dir.string(), {(dir / "config.json").string()}));
  EXPECT_TRUE(FailsWith((root_ / "no_such_dir").string(), {(root_ / "no_such_dir").string()}));
}

TEST_F(BadCheckpointTest, ConfigFieldMissingOrMistyped) {
  const fs::path dir = Fresh("base_bf16");
  const json original = json::parse(ReadBytes(dir / "config.json"));
  json j = original;
  j.erase("hidden_size");
  WriteBytes(dir / "config.json", j.dump());
  EXPECT_TRUE(FailsWith(dir.string(), {(dir / "config.json").string(), "hidden_size", "missing"}));
  j = original;
  j["num_hidden_layers"] = "3";
  WriteBytes(dir / "config.json", j.dump());
  EXPECT_TRUE(FailsWith(dir.string(), {(dir / "config.json").string(), "num_hidden_layers", "integer"}));
  j = original;
  j["num_hidden_layers"] = -3;
  WriteBytes(dir / "config.json", j.dump());
  EXPECT_TRUE(FailsWith(dir.string(), {(dir / "config.json").string(), "num_hidden_layers", "positive"}));
}

// The config parses and validates, but its sizes disagree with the stored tensors.
TEST_F(BadCheckpointTest, ConfigDisagreesWithWeights) {
  struct Case {
    std::string field;
    json value;
    std::string tensor, detail;
  };
  const std::vector<Case> cases = {
      {"hidden_size", 256, "model.embed_tokens.weight", "expected shape [512, 256], found [512, 128]"},
      {"vocab_size", 1024, "model.embed_tokens.weight", "expected shape [1024, 128], found [512, 128]"},
      {"intermediate_size", 512, "model.layers.0.mlp.gate_proj.weight", "expected shape [512, 128], found [256, 128]"},
      {"n_routed_experts", 32, "model.layers.1.mlp.gate.weight", "expected shape [32, 128], found [16, 128]"},
      {"kv_lora_rank", 32, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
       "expected shape [48, 128], found [80, 128]"},
      {"moe_intermediate_size", 32, "model.layers.1.mlp.experts.0.gate_proj.weight",
       "expected shape [32, 128], found [64, 128]"},
      {"num_hidden_layers", 4, "model.layers.3.input_layernorm.weight", "missing"},
      {"q_lora_rank", nullptr, "model.layers.0.self_attn.q_proj.weight", "missing"},
  };
  for (const Case& c : cases) {
    const fs::path dir = Fresh("base_bf16");
    EditJson(dir / "config.json", [&](json& j) { j[c.field] = c.value; });
    EXPECT_TRUE(FailsWith(dir.string(), {c.tensor, (dir / "model.safetensors").string(), c.detail}))
        << c.field << " = " << c.value.dump();
  }
}

TEST_F(BadCheckpointTest, ConfigWithAbsurdSizesIsAnErrorNotACrash) {
  // Sizes past any model's, whose products the loader takes would wrap (heads of 2^60 made
  // every attention projection's size 0), and YaRN values whose logarithms are not numbers.
  const std::vector<std::pair<std::string, json>> cases = {
      {"num_hidden_layers", int64_t{1} << 50},
      {"num_attention_heads", int64_t{1} << 60},
      {"moe_intermediate_size", int64_t{1} << 40},
      {"max_position_embeddings", 0},
      {"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", -1}}},
      {"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 4096},
                        {"beta_fast", 1.0}, {"beta_slow", 32.0}}},
  };
  for (const auto& [field, value] : cases) {
    const fs::path dir = Fresh("base_bf16");
    EditJson(dir / "config.json", [&](json& j) { j[field] = value; });
    EXPECT_TRUE(FailsWith(dir.string(), {"config.json", field})) << field << " = " << value.dump();
  }
}

TEST_F(BadCheckpointTest, TensorNamedTwiceOrOverlappingAnother) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  Parsed p = ParseSafetensors(file);
  // A second name over another tensor's bytes.
  json header = p.header;
  header["model.norm.weight.copy"] = header["model.norm.weight"];
  WriteSafetensors(file, header, p.data);
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), "model.norm.weight", "overlap"}));
  // The same name twice in the header's text (a JSON parser keeps the last one).
  std::string text = p.header.dump();
  text.pop_back();
  text += ", \"model.norm.weight\": " + p.header["model.norm.weight"].dump() + "}";
  WriteSafetensorsText(file, text, p.data);
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), "model.norm.weight", "twice"}));
}

TEST_F(BadCheckpointTest, WeightsThatAreNotARegularFile) {
  const fs::path dir = Fresh("base_bf16");
  const fs::path file = dir / "model.safetensors";
  fs::remove(file);
  ASSERT_EQ(mkfifo(file.c_str(), 0600), 0);  // opening it for reading had waited for a writer
  EXPECT_TRUE(FailsWith(dir.string(), {file.string(), "not a regular file"}));
  fs::remove(file);
  fs::create_symlink("model.safetensors", file);  // a link to itself
  EXPECT_TRUE(FailsWith(dir.string(), {file.string()}));
}

TEST_F(BadCheckpointTest, ConfigDisagreesWithShardedWeights) {
  const fs::path dir = Fresh("base_sharded");
  EditJson(dir / "config.json", [](json& j) { j["hidden_size"] = 256; });
  const std::string shard = ShardOf(dir, "model.embed_tokens.weight");
  EXPECT_TRUE(FailsWith(dir.string(), {"model.embed_tokens.weight", (dir / shard).string(),
                                       "expected shape [512, 256], found [512, 128]"}));
}

// ---------------------------------------------------------------------------------------------
// FP8 problems

TEST_F(BadCheckpointTest, Fp8WeightMissingScale) {
  const fs::path dir = Fresh("base_fp8");
  const std::string scale = "model.layers.1.self_attn.q_b_proj.weight_scale_inv";
  DropTensor(dir / "model.safetensors", scale);
  EXPECT_TRUE(FailsWith(dir.string(), {scale, (dir / "model.safetensors").string(), "missing"}));
}

TEST_F(BadCheckpointTest, Fp8ScaleWithWrongShapeOrDtype) {
  const fs::path dir = Fresh("base_fp8");
  const std::string scale = "model.layers.2.mlp.shared_experts.down_proj.weight_scale_inv";  // [1, 1] F32
  const fs::path file = dir / "model.safetensors";
  RewriteTensors(file, [&](const TensorInfo& t, SafetensorsWriter& w) {
    if (t.name != scale) return AddCopy(w, t);
    const float twice[2] = {1.0f, 1.0f};
    w.Add(t.name, t.dtype, {1, 2}, twice, sizeof(twice));
  });
  EXPECT_TRUE(FailsWith(dir.string(), {scale, file.string(), "expected shape [1, 1], found [1, 2]"}));

  CopyDir(Base("base_fp8"), dir);
  RewriteTensors(file, [&](const TensorInfo& t, SafetensorsWriter& w) {
    if (t.name != scale) return AddCopy(w, t);
    const uint16_t one = 0x3f80;  // 1.0 in BF16
    w.Add(t.name, DType::kBF16, {1, 1}, &one, 2);
  });
  EXPECT_TRUE(FailsWith(dir.string(), {scale, file.string(), "expected dtype F32, found BF16"}));
}

}  // namespace
}  // namespace daedalus
