// The `daedalus` subcommands. Each registers its flags on the app and returns the function
// that runs it (exit code).
#pragma once

#include <functional>
#include <string>

#include "CLI/CLI.hpp"

namespace daedalus {

using Command = std::function<int()>;

Command AddMakeModelCommand(CLI::App& app);
Command AddRunCommand(CLI::App& app);
Command AddBenchCommand(CLI::App& app);
Command AddBenchA2aCommand(CLI::App& app);
Command AddWorkerCommand(CLI::App& app);
Command AddCoordinatorCommand(CLI::App& app);
Command AddServeCommand(CLI::App& app);
Command AddGenerateCommand(CLI::App& app);
Command AddStatusCommand(CLI::App& app);
Command AddLoadgenCommand(CLI::App& app);
Command AddTokenizeCommand(CLI::App& app);
Command AddPlanCommand(CLI::App& app);

// Prints "daedalus: error: <message>" to stderr and returns 1.
int Fail(const std::string& message);
// The CPU's model name and its vector extensions, for benchmark reports.
std::string CpuModel();
// Applies --threads (0 keeps OMP_NUM_THREADS or the core count) to OpenMP and BLAS.
void SetThreads(int threads);

}  // namespace daedalus
