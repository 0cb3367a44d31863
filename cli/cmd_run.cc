#include <cstdio>
#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "cli/request_io.h"
#include "worker/engine.h"

namespace daedalus {

namespace {

absl::Status WriteLogits(const std::string& path, const Request& request, const Result& result) {
  nlohmann::json j;
  j["prompt_ids"] = request.prompt_ids;
  j["logits"] = result.prompt_logits;
  j["generated_ids"] = result.generated_ids;
  std::ofstream out(path);
  out << j.dump() << "\n";
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace

Command AddRunCommand(CLI::App& app) {
  struct Flags {
    std::string model, prompt_ids, prompts, output, dump_logits;
    Request defaults;
    bool ignore_eos = false;
    EngineFlags engine;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--model", f->model, "checkpoint directory (Hugging Face layout)")->required();
  auto* ids = app.add_option("--prompt-ids", f->prompt_ids, "one prompt: comma-separated token ids");
  auto* file = app.add_option("--prompts", f->prompts, "JSON lines of requests, run as one continuous batch");
  ids->excludes(file);
  app.add_option("--output", f->output, "results as JSON lines (default: standard output)");
  app.add_option("--dump-logits", f->dump_logits, "with --prompt-ids: write prompt logits and generated ids as JSON")
      ->needs(ids);
  app.add_option("--max-new-tokens", f->defaults.max_new_tokens, "tokens to generate");
  app.add_option("--temperature", f->defaults.sampling.temperature, "0 is greedy");
  app.add_option("--top-p", f->defaults.sampling.top_p, "nucleus sampling mass");
  app.add_option("--top-k", f->defaults.sampling.top_k, "sample among the k most likely (0: all)");
  app.add_option("--seed", f->defaults.sampling.seed, "sampling seed");
  app.add_flag("--ignore-eos", f->ignore_eos, "do not stop at the config's eos_token_id");
  f->engine.Register(app);
  return [f, ids, file]() {
    if (ids->count() == 0 && file->count() == 0) return Fail("run needs --prompt-ids or --prompts");
    SetThreads(f->engine.threads);
    auto weights = LoadModelWeights(f->model);
    if (!weights.ok()) return Fail(std::string(weights.status().message()));
    Engine engine(**weights, f->engine.Options());
    f->defaults.stop_at_eos = !f->ignore_eos;

    std::vector<Request> requests;
    std::vector<Result> results;  // parse errors, by line
    int failures = 0;
    if (ids->count() > 0) {
      Request r = f->defaults;
      auto parsed = ParseIdList(f->prompt_ids);
      if (!parsed.ok()) return Fail(absl::StrCat("--prompt-ids: ", parsed.status().message()));
      r.prompt_ids = *parsed;
      r.want_prompt_logits = !f->dump_logits.empty();
      if (absl::Status s = engine.Validate(r); !s.ok()) return Fail(std::string(s.message()));
      requests.push_back(r);
    } else {
      std::ifstream in(f->prompts);
      if (!in) return Fail(absl::StrCat(f->prompts, ": cannot open"));
      std::string line;
      for (int64_t n = 1; std::getline(in, line); ++n) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        Request r = f->defaults;
        r.id = absl::StrCat(n);
        auto parsed = ParseRequestLine(line, r, &r.id);
        absl::Status s = parsed.ok() ? engine.Validate(*parsed) : parsed.status();
        if (!s.ok()) {
          std::fprintf(stderr, "daedalus: error: %s line %lld: %s\n", f->prompts.c_str(), static_cast<long long>(n),
                       std::string(s.message()).c_str());
          Result bad{r.id, {}, "error", s, {}};
          results.push_back(bad);
          requests.push_back(Request{});  // placeholder keeps output in input order
          ++failures;
          continue;
        }
        requests.push_back(*parsed);
        results.push_back(Result{});
      }
    }
    std::vector<int64_t> slot(requests.size(), -1);
    for (size_t i = 0; i < requests.size(); ++i) {
      if (requests[i].prompt_ids.empty()) continue;
      auto added = engine.Add(requests[i]);
      if (!added.ok()) return Fail(std::string(added.status().message()));
      slot[i] = *added;
    }
    std::vector<Result> done = engine.RunToCompletion();
    results.resize(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      if (slot[i] < 0) continue;
      results[i] = done[slot[i]];
      if (!results[i].status.ok()) ++failures;
    }
    if (!f->dump_logits.empty()) {
      if (absl::Status s = WriteLogits(f->dump_logits, requests[0], results[0]); !s.ok()) return Fail(std::string(s.message()));
    }
    FILE* out = stdout;
    if (!f->output.empty()) {
      out = std::fopen(f->output.c_str(), "w");
      if (out == nullptr) return Fail(absl::StrCat(f->output, ": cannot create"));
    }
    for (const Result& r : results) std::fprintf(out, "%s\n", ResultJson(r).dump().c_str());
    if (out != stdout && std::fclose(out) != 0) return Fail(absl::StrCat(f->output, ": write failed"));
    return failures == 0 ? 0 : 1;
  };
}

}  // namespace daedalus
