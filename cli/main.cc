// daedalus: one executable, subcommands for each job.
#include <cblas.h>
#include <omp.h>

#include <cstdio>
#include <map>

#include "cli/commands.h"

namespace daedalus {

int Fail(const std::string& message) {
  std::fprintf(stderr, "daedalus: error: %s\n", message.c_str());
  return 1;
}

void SetThreads(int threads) {
  if (threads <= 0) return;
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

}  // namespace daedalus

int main(int argc, char** argv) {
  // BLAS calls made inside our parallel loops must run on their caller's thread: nested
  // teams oversubscribe the cores and spin against each other.
  omp_set_max_active_levels(1);
  CLI::App app{"Daedalus: expert-parallel inference for DeepSeek-V3-style models"};
  app.require_subcommand(1);
  std::map<CLI::App*, daedalus::Command> commands;
  auto add = [&](const char* name, const char* help, daedalus::Command (*make)(CLI::App&)) {
    CLI::App* sub = app.add_subcommand(name, help);
    commands[sub] = make(*sub);
  };
  add("make-model", "write a seeded random-weight checkpoint in the Hugging Face DeepSeek-V3 layout",
      daedalus::AddMakeModelCommand);
  add("run", "generate from a checkpoint in one process", daedalus::AddRunCommand);
  add("bench", "measure prefill and decode speed, KV cache size and the memory roofline", daedalus::AddBenchCommand);
  CLI11_PARSE(app, argc, argv);
  for (auto& [sub, run] : commands)
    if (sub->parsed()) return run();
  return 1;
}
