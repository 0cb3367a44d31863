// What the request fuzzers parse against: the `tiny` preset's config and tokenizer, made once
// per process (the tokenizer through make-model's writer, in a temporary folder).
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "core/tokenizer.h"
#include "tests/fuzz/fuzz_check.h"
#include "worker/make_tokenizer.h"
#include "worker/presets.h"

namespace daedalus::fuzz {

struct TinyModel {
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
};

inline const TinyModel& Tiny() {
  static const TinyModel* model = [] {
    auto* m = new TinyModel;
    auto config = PresetConfig("tiny");
    if (!config.ok()) std::abort();
    m->config = *config;
    const auto dir = std::filesystem::temp_directory_path() / ("daedalus-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    if (!WriteTokenizer(m->config, dir.string()).ok()) std::abort();
    auto tokenizer = Tokenizer::Load(dir.string());
    std::filesystem::remove_all(dir);
    if (!tokenizer.ok()) {
      std::fprintf(stderr, "%s\n", std::string(tokenizer.status().message()).c_str());
      std::abort();
    }
    m->tokenizer = std::move(*tokenizer);
    return m;
  }();
  return *model;
}

}  // namespace daedalus::fuzz
