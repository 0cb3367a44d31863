#include "cli/huge_pages.h"

#include <sys/auxv.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

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

// Set in the environment of the restart only, and taken out of it at once: whatever glibc made
// of the tunable, the process restarts at most once (a privileged start, AT_SECURE, has glibc
// drop GLIBC_TUNABLES before main, so the tunable alone would restart it forever).
constexpr char kRestarted[] = "DAEDALUS_HUGE_PAGES_RESTARTED";

// The kernel's pool of reserved hugetlbfs pages (vm.nr_hugepages), 0 where it does not say.
int64_t ReservedHugePages() {
  std::ifstream in("/proc/sys/vm/nr_hugepages");
  int64_t n = 0;
  return in >> n ? n : 0;
}

}  // namespace

void StartOnHugePages(char** argv) {
  if (std::getenv(kRestarted) != nullptr) {
    unsetenv(kRestarted);
    return;
  }
  const char* setting = std::getenv("DAEDALUS_HUGE_PAGES");
  if (setting != nullptr && std::string(setting) == "off") return;
  if (getauxval(AT_SECURE) != 0) return;  // setuid or file capabilities: glibc ignores the tunables
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  const std::string chosen = tunables != nullptr ? tunables : "";
  if (chosen.find(kHugePagesTunable) != std::string::npos) return;  // the user's choice
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
  if (setenv("GLIBC_TUNABLES", value.c_str(), 1) == 0 && setenv(kRestarted, "1", 1) == 0) execv(self, argv);
  // No exec (an environment at the kernel's limit, say): this process goes on as it started, and
  // its environment says so again (HugePagesAsked reads it).
  unsetenv(kRestarted);
  if (tunables == nullptr) unsetenv("GLIBC_TUNABLES");
  else setenv("GLIBC_TUNABLES", chosen.c_str(), 1);
}

std::string HugePagesDescription() {
  if (HugePagesTunable() == 2) {
    return "huge pages: glibc.malloc.hugetlb=2 (malloc maps reserved hugetlbfs pages where the kernel has them, " +
           std::to_string(ReservedHugePages()) + " reserved now; the weights transparent ones, kernel mode " +
           KernelMode() + ")";
  }
  const std::string mode = KernelMode();
  if (mode == "never") return "huge pages: off (the kernel's transparent huge pages are off)";
  if (mode == "unknown") return "huge pages: off (this kernel has no transparent huge pages)";
  if (HugePagesAsked() || mode == "always") return "huge pages: on (transparent, kernel mode " + mode + ")";
  return "huge pages: off (malloc does not ask for them; kernel mode " + mode + ")";
}

}  // namespace daedalus
