#include "cli/huge_pages.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "core/weight_memory.h"

namespace daedalus {
namespace {

// The kernel's transparent huge page mode: the bracketed word of always [madvise] never.
std::string KernelMode() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!std::getline(in, line)) return "unknown";
  const size_t open = line.find('['), close = line.find(']');
  return open != std::string::npos && close > open ? line.substr(open + 1, close - open - 1) : "unknown";
}

}  // namespace

void StartOnHugePages(char** argv) {
  const char* setting = std::getenv("DAEDALUS_HUGE_PAGES");
  if (setting != nullptr && std::string(setting) == "off") return;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  const std::string chosen = tunables != nullptr ? tunables : "";
  if (chosen.find(kHugePagesTunable) != std::string::npos) return;  // chosen already (or this is the restart)
  // Not under a tool that would not follow the exec (valgrind without --trace-children).
  const char* preload = std::getenv("LD_PRELOAD");
  if (preload != nullptr && std::string(preload).find("vgpreload") != std::string::npos) return;
  // The binary by its own path (not /proc/self/exe), so that the process keeps its name; and
  // only where that is the program itself, not a loader it was started through (ld.so ./daedalus).
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0 || argv[0] == nullptr) return;
  self[n] = '\0';
  const auto name = [](const std::string& path) { return path.substr(path.find_last_of('/') + 1); };
  if (name(self) != name(argv[0])) return;
  const std::string value = chosen + (chosen.empty() ? "" : ":") + kHugePagesTunable + "=1";
  if (setenv("GLIBC_TUNABLES", value.c_str(), 1) == 0) execv(self, argv);
}

std::string HugePagesDescription() {
  const std::string mode = KernelMode();
  if (mode == "never") return "huge pages: off (the kernel's transparent huge pages are off)";
  if (HugePagesAsked() || mode == "always") return "huge pages: on (transparent, kernel mode " + mode + ")";
  return "huge pages: off (malloc does not ask for them; kernel mode " + mode + ")";
}

}  // namespace daedalus
