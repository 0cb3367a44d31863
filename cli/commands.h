// The `daedalus` subcommands. Each registers its flags on the app and returns the function
// that runs it (exit code).
#pragma once

#include <functional>

#include "CLI/CLI.hpp"

namespace daedalus {

using Command = std::function<int()>;

Command AddMakeModelCommand(CLI::App& app);
Command AddRunCommand(CLI::App& app);
Command AddBenchCommand(CLI::App& app);
Command AddBenchA2aCommand(CLI::App& app);
Command AddPlanCommand(CLI::App& app);

// Prints "daedalus: error: <message>" to stderr and returns 1.
int Fail(const std::string& message);
// Applies --threads (0 keeps OMP_NUM_THREADS or the core count) to OpenMP and BLAS.
void SetThreads(int threads);

}  // namespace daedalus
