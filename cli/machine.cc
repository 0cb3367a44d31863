// What the benchmark programs report about this machine, and how the CLI's threads are placed.
#include "cli/machine.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/host_memory.h"

namespace daedalus {

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, flags, model = "unknown CPU";
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0 && model == "unknown CPU") model = line.substr(line.find(':') + 2);
    if (line.rfind("flags", 0) == 0 && flags.empty()) flags = line;
  }
  flags += ' ';
  std::vector<std::string> have;
  for (const char* f : {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    if (flags.find(absl::StrCat(" ", f, " ")) != std::string::npos) have.push_back(f);
  return absl::StrCat(model, " [", absl::StrJoin(have, " "), "]");
}

std::pair<int, int> NumaNodes(int threads) {
  cpu_set_t allowed;
  std::set<int> all, used;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return {1, 1};
  int seen = 0;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &allowed)) continue;
    int node = 0;
    const std::string cpu = absl::StrCat("/sys/devices/system/cpu/cpu", c);
    for (const auto& entry :
         std::filesystem::directory_iterator(cpu, std::filesystem::directory_options::skip_permission_denied)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("node", 0) == 0) node = std::atoi(name.c_str() + 4);
    }
    all.insert(node);
    if (seen++ < threads) used.insert(node);
  }
  return {static_cast<int>(std::max<size_t>(all.size(), 1)), static_cast<int>(std::max<size_t>(used.size(), 1))};
}

void SetThreads(int threads) {
  if (threads > 0) {
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
  }
  // Pin each OpenMP thread to its own CPU (as OMP_PROC_BIND=true would), unless the user chose
  // a binding. Unpinned threads migrate, and a thread spinning at a barrier can land on the CPU
  // its partner is computing on: measured 4x slower decode on a 2-vCPU machine.
  if (std::getenv("OMP_PROC_BIND") != nullptr || std::getenv("OMP_PLACES") != nullptr) return;
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  if (cpus.empty() || omp_get_max_threads() > static_cast<int>(cpus.size())) return;
  // Several ranks on this node that the launcher did not bind: each would pin its threads to
  // the same first CPUs. Leave them to the scheduler.
  if (LocalProcessCount() > 1 && static_cast<long>(cpus.size()) >= sysconf(_SC_NPROCESSORS_ONLN)) return;
#pragma omp parallel
  {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpus[omp_get_thread_num()], &one);
    pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
  }
}

}  // namespace daedalus
