// `daedalus tokenize`: the checkpoint's tokenizer on standard input. Text in, a JSON array
// of token ids out; with --decode, a JSON array of ids in, text out.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "core/tokenizer.h"
#include "nlohmann/json.hpp"

namespace daedalus {

Command AddTokenizeCommand(CLI::App& app) {
  struct Flags {
    std::string model;
    bool decode = false, no_special = false, keep_special = false;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--model", f->model, "checkpoint directory with tokenizer.json")->required();
  app.add_flag("--decode", f->decode, "read a JSON array of token ids and print the text");
  app.add_flag("--no-special-tokens", f->no_special, "encode without the post-processor's tokens (BOS)");
  app.add_flag("--keep-special-tokens", f->keep_special, "decode special tokens too");
  return [f]() {
    auto tokenizer = Tokenizer::Load(f->model);
    if (!tokenizer.ok()) return Fail(std::string(tokenizer.status().message()));
    const std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    if (f->decode) {
      nlohmann::json ids = nlohmann::json::parse(input, nullptr, false);
      if (ids.is_discarded() || !ids.is_array()) return Fail("--decode reads a JSON array of token ids");
      std::vector<int32_t> v;
      for (const auto& id : ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (*tokenizer)->size()) {
          return Fail(absl::StrCat("token id ", id.dump(), " is not in the vocabulary [0, ", (*tokenizer)->size(), ")"));
        }
        v.push_back(id.get<int32_t>());
      }
      const std::string text = (*tokenizer)->Decode(v, !f->keep_special);
      std::fwrite(text.data(), 1, text.size(), stdout);
      return 0;
    }
    auto ids = (*tokenizer)->Encode(input, !f->no_special);
    if (!ids.ok()) return Fail(std::string(ids.status().message()));
    std::printf("%s\n", nlohmann::json(*ids).dump().c_str());
    return 0;
  };
}

}  // namespace daedalus
