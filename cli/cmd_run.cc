#include <omp.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "core/host_memory.h"
#include "cli/huge_pages.h"
#include "kernels/cpu_isa.h"
#include "cli/engine_flags.h"
#include "cli/parallel.h"
#include "routing/mpi_transport.h"
#include "cli/request_io.h"
#include "worker/engine.h"
#include "worker/kv_cache.h"

namespace daedalus {

namespace {

// Reads a prompts file (JSON lines). Each line becomes a request; a line that does not parse
// or validate becomes a placeholder whose result holds the error (reported on stderr when
// `report`), so the output keeps one line per input line.
absl::Status ReadRequests(const std::string& path, const Request& defaults, const Engine& engine, bool report,
                          std::vector<Request>& requests, std::vector<Result>& results, int& failures) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Request r = defaults;
    r.id = absl::StrCat(n);
    auto parsed = ParseRequestLine(line, r, &r.id);
    absl::Status s = parsed.ok() ? engine.Validate(*parsed) : parsed.status();
    if (s.ok()) {
      requests.push_back(*parsed);
      results.emplace_back();
      continue;
    }
    if (report) {
      std::fprintf(stderr, "daedalus: error: %s line %lld: %s\n", path.c_str(), static_cast<long long>(n),
                   std::string(s.message()).c_str());
    }
    requests.emplace_back();  // no prompt: never run
    results.push_back(Result{r.id, {}, "error", s, {}, {}});
    ++failures;
  }
  return absl::OkStatus();
}

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
    bool ignore_eos = false, verbose = false;
    EngineFlags engine;
    int redundant_experts = 0;
    double collective_timeout_s = 60;
    std::string expert_load_out, placement_from;
    int ranks_per_node = 0;
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
  app.add_option("--redundant-experts", f->redundant_experts,
                 "under mpirun/srun: extra replicas of routed experts, spread over the ranks");
  app.add_option("--expert-load-out", f->expert_load_out,
                 "write the routed (token, slot) count per layer and expert as JSON (all ranks summed)");
  app.add_option("--placement-from", f->placement_from,
                 "under mpirun/srun: place experts by the load in this --expert-load-out file");
  app.add_option("--ranks-per-node", f->ranks_per_node,
                 "under mpirun/srun: ranks per node for node-level placement (default: the launcher's local count)");
  app.add_option("--collective-timeout", f->collective_timeout_s,
                 "under mpirun/srun: seconds a rank waits in a collective before it reports and aborts");
  app.add_flag("--verbose", f->verbose, "print the CPU kernel tier and thread count to standard error");
  f->engine.Register(app);
  return [f, ids, file]() {
    if (ids->count() == 0 && file->count() == 0) return Fail("run needs --prompt-ids or --prompts");
    SetThreads(f->engine.threads);
    if (f->verbose) {
      std::fprintf(stderr, "kernel tier: %s; %d threads; %s\n", CpuIsaDescription(ActiveCpuIsa()).c_str(),
                   omp_get_max_threads(), HugePagesDescription().c_str());
    }
    // Under mpirun/srun: expert parallel. Each rank holds the dense weights and its share of
    // the routed experts, runs every world_size-th request, and rank 0 writes the results.
    std::unique_ptr<ExpertParallelRun> ep;
    if (LaunchedByMpi()) {
      auto started =
          ExpertParallelRun::Start(f->model, f->redundant_experts, f->placement_from, f->ranks_per_node,
                                   f->collective_timeout_s);
      if (!started.ok()) return Fail(std::string(started.status().message()));
      ep = std::move(*started);
    }
    const int rank = ep ? ep->rank() : 0, world = ep ? ep->world_size() : 1;
    ExpertFilter mine;
    if (ep) {
      mine = [&](int64_t layer, int64_t expert) {
        return ep->placements()[layer].Holds(rank, static_cast<int32_t>(expert));
      };
    }
    auto weights = LoadModelWeights(f->model, mine);
    if (!weights.ok()) return Fail(std::string(weights.status().message()));
    EngineOptions options = f->engine.Options((*weights)->config);
    if (ep) {
      options.transport = &ep->transport();
      options.placements = &ep->placements();
    }
    auto backend = MakeDeviceBackend(f->engine.Device(), **weights, options);
    if (!backend.ok()) return Fail(std::string(backend.status().message()));
    // Ranks on one node share its memory: each checks its share before any commits its pool.
    if (absl::Status fits = PagedKvCache::CheckFits((*weights)->config, options.kv, ep ? LocalProcessCount() : 1);
        !fits.ok())
      return Fail(std::string(fits.message()));
    if (ep) {
      if (absl::Status s = ep->transport().Barrier("every rank's KV pool checked, before any is committed"); !s.ok())
        return Fail(std::string(s.message()));
    }
    Engine engine(**weights, options);
    f->defaults.stop_at_eos = !f->ignore_eos;

    Request defaults = f->defaults;
    defaults.want_prompt_logits = !f->dump_logits.empty();
    std::vector<Request> requests;
    std::vector<Result> results;  // by input line; rejected requests already hold their error
    int failures = 0;
    if (ids->count() > 0) {
      auto parsed = ParseIdList(f->prompt_ids);
      if (!parsed.ok()) return Fail(absl::StrCat("--prompt-ids: ", parsed.status().message()));
      Request r = defaults;
      r.prompt_ids = *parsed;
      if (absl::Status s = engine.Validate(r); !s.ok()) return Fail(std::string(s.message()));
      requests.push_back(r);
      results.emplace_back();
    } else if (absl::Status s = ReadRequests(f->prompts, defaults, engine, rank == 0, requests, results, failures);
               !s.ok()) {
      return Fail(std::string(s.message()));
    }
    std::vector<int64_t> slot(requests.size(), -1);
    for (size_t i = 0; i < requests.size(); ++i) {
      if (requests[i].prompt_ids.empty() || static_cast<int>(i % world) != rank) continue;
      auto added = engine.Add(requests[i]);
      if (!added.ok()) return Fail(std::string(added.status().message()));
      slot[i] = *added;
    }
    const auto started = std::chrono::steady_clock::now();
    std::vector<Result> done = engine.RunToCompletion();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (ep && !engine.status().ok()) ep->Abort(engine.status());
    std::vector<std::pair<int64_t, std::string>> lines;  // results of the requests run here
    for (size_t i = 0; i < requests.size(); ++i) {
      if (slot[i] < 0) continue;
      results[i] = done[slot[i]];
      lines.emplace_back(static_cast<int64_t>(i), ResultJson(results[i]).dump());
    }
    ExpertLoad load = engine.expert_load();
    if (ep) {
      if (absl::Status s = ep->SumOverRanks(load); !s.ok()) ep->Abort(s);
      if (rank == 0) std::fprintf(stderr, "expert placement imbalance (max rank load / mean) over MoE layers: %.3f\n",
                                  ep->WorstImbalance(load));
    }
    if (!f->expert_load_out.empty() && rank == 0) {
      const auto& c = (*weights)->config;
      if (absl::Status s = WriteExpertLoad(f->expert_load_out, load, c.n_routed_experts); !s.ok()) {
        return Fail(std::string(s.message()));
      }
    }
    if (ep) {
      auto gathered = ep->GatherLines(lines);
      if (!gathered.ok()) ep->Abort(gathered.status());
      if (rank != 0) return 0;
      lines = std::move(*gathered);
    }
    // One line per input line, in order: results from every rank, or the rejection.
    std::vector<std::string> output(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) output[i] = ResultJson(results[i]).dump();
    for (const auto& [i, line] : lines) {
      output[i] = line;
      if (nlohmann::json::parse(line).contains("error")) ++failures;
    }
    if (!f->dump_logits.empty()) {
      if (absl::Status s = WriteLogits(f->dump_logits, requests[0], results[0]); !s.ok()) return Fail(std::string(s.message()));
    }
    FILE* out = stdout;
    if (!f->output.empty()) {
      out = std::fopen(f->output.c_str(), "w");
      if (out == nullptr) return Fail(absl::StrCat(f->output, ": cannot create"));
    }
    int64_t generated = 0;
    for (const std::string& line : output) {
      std::fprintf(out, "%s\n", line.c_str());
      auto j = nlohmann::json::parse(line);
      if (j.contains("generated_ids")) generated += static_cast<int64_t>(j["generated_ids"].size());
    }
    std::fprintf(stderr, "generated %lld tokens for %zu requests in %.3f s: %.1f tokens/s (%d rank%s)\n",
                 static_cast<long long>(generated), requests.size(), seconds, generated / seconds, world, world > 1 ? "s" : "");
    if (f->verbose && options.kv.prefix_caching) {
      std::fprintf(stderr, "prefix cache: %lld of %lld prompt tokens served from cache, %lld pages cached, %lld evicted\n",
                   static_cast<long long>(engine.prompt_tokens_cached()), static_cast<long long>(engine.prompt_tokens()),
                   static_cast<long long>(engine.cache().cached_pages()), static_cast<long long>(engine.cache().evictions()));
    }
    if (f->verbose && engine.preemptions() > 0) {
      std::fprintf(stderr, "KV pool ran out: %lld preemptions (each sequence computed again from its tokens so far)\n",
                   static_cast<long long>(engine.preemptions()));
    }
    if (out != stdout && std::fclose(out) != 0) return Fail(absl::StrCat(f->output, ": write failed"));
    return failures == 0 ? 0 : 1;
  };
}

}  // namespace daedalus
