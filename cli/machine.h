// What the benchmark programs report about this machine, and how the CLI's threads are placed.
#pragma once

#include <string>
#include <utility>

namespace daedalus {

// The CPU's model name and its vector extensions, for benchmark reports.
std::string CpuModel();
// NUMA nodes of the CPUs this process may run on, and of the first `threads` of them (those the
// pinned OpenMP threads use).
std::pair<int, int> NumaNodes(int threads);
// Applies --threads (0 keeps OMP_NUM_THREADS or the core count) to OpenMP and BLAS, and pins
// each OpenMP thread to a CPU of its own unless the user chose a binding.
void SetThreads(int threads);

}  // namespace daedalus
