// Large host buffers (packed weights, the KV cache, activations) on transparent huge pages.
#pragma once

#include <string>

namespace daedalus {

// glibc's malloc asks the kernel for huge pages (madvise) only when the tunable
// glibc.malloc.hugetlb=1 is set as the process starts: unless it is set already (by the user
// too), or DAEDALUS_HUGE_PAGES=off, this sets it and starts the process again in place (execv
// of its own binary: same pid, name, arguments and environment). Streaming weights (carved from
// blocks advised likewise, core/weight_memory.h) and the latent cache then crosses 2 MB pages
// instead of 4 KB ones. It restarts at most once. Under valgrind, through an explicit loader
// (ld.so ./daedalus), on a privileged start (setuid or file capabilities: glibc ignores its
// tunables then) or if the exec fails, the process goes on with 4 KB pages, and says so.
void StartOnHugePages(char** argv);

// How this process's allocations are paged, for logs: the kernel's THP mode and whether malloc
// asks for huge pages (transparent ones, or with glibc.malloc.hugetlb=2 reserved hugetlbfs ones).
std::string HugePagesDescription();

}  // namespace daedalus
