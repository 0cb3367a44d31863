// daedalus: one executable, subcommands for each job.
#include <omp.h>

#include <cstdio>
#include <map>

#include "cli/commands.h"
#include "cli/huge_pages.h"
#include "kernels/cpu_isa.h"

namespace daedalus {

int Fail(const std::string& message) {
  std::fprintf(stderr, "daedalus: error: %s\n", message.c_str());
  return 1;
}

}  // namespace daedalus

int main(int argc, char** argv) {
  daedalus::StartOnHugePages(argv);
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
  add("bench-a2a", "measure expert dispatch and combine against a raw MPI_Alltoallv (under mpirun)",
      daedalus::AddBenchA2aCommand);
  add("serve", "run a local cluster: a coordinator plus --workers worker processes under mpirun",
      daedalus::AddServeCommand);
  add("coordinator", "run the cluster's coordinator (workers start elsewhere)", daedalus::AddCoordinatorCommand);
  add("worker", "run one worker of a cluster (under mpirun/srun, or alone)", daedalus::AddWorkerCommand);
  add("generate", "send requests to a cluster and stream the tokens back", daedalus::AddGenerateCommand);
  add("status", "show a cluster's workers, KV usage and expert load", daedalus::AddStatusCommand);
  add("loadgen", "measure a cluster's throughput and latency at several concurrencies", daedalus::AddLoadgenCommand);
  add("tokenize", "encode standard input with the checkpoint's tokenizer (or --decode ids)", daedalus::AddTokenizeCommand);
  add("plan", "predict memory, throughput and latency of an expert-parallel deployment", daedalus::AddPlanCommand);
  CLI11_PARSE(app, argc, argv);
  // DAEDALUS_CPU_ISA names a tier this machine lacks, or none at all: say so before any work.
  if (absl::Status isa = daedalus::InitCpuIsaFromEnvironment(); !isa.ok()) return daedalus::Fail(std::string(isa.message()));
  for (auto& [sub, run] : commands)
    if (sub->parsed()) return run();
  return 1;
}
