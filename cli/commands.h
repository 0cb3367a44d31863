// The `daedalus` subcommands. Each registers its flags on the app and returns the function
// that runs it (exit code).
#pragma once

#include <functional>
#include <string>

#include "CLI/CLI.hpp"
#include "cli/machine.h"

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

}  // namespace daedalus
