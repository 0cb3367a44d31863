#include "cli/kernel_counter.h"

#include <cuda_runtime.h>
#include <cupti.h>
#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"

namespace daedalus {
namespace {

std::atomic<int64_t> kernels{0}, copies{0};

struct Cupti {
  decltype(&cuptiActivityRegisterCallbacks) register_callbacks = nullptr;
  decltype(&cuptiActivityEnable) enable = nullptr;
  decltype(&cuptiActivityDisable) disable = nullptr;
  decltype(&cuptiActivityFlushAll) flush_all = nullptr;
  decltype(&cuptiActivityGetNextRecord) next_record = nullptr;
  std::string error;
};

const Cupti& Load() {
  static const Cupti cupti = [] {
    Cupti c;
    const std::string soname = absl::StrCat("libcupti.so.", CUDART_VERSION / 1000);
    void* h = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
    for (const char* dir : {"/usr/local/cuda/lib64/", "/usr/local/cuda/extras/CUPTI/lib64/", "/usr/local/cuda/lib/"}) {
      if (h == nullptr) h = dlopen((dir + soname).c_str(), RTLD_NOW | RTLD_LOCAL);
    }
    if (h == nullptr) {
      c.error = absl::StrCat("no ", soname, " (CUPTI) on the library path or under /usr/local/cuda");
      return c;
    }
    c.register_callbacks = reinterpret_cast<decltype(c.register_callbacks)>(dlsym(h, "cuptiActivityRegisterCallbacks"));
    c.enable = reinterpret_cast<decltype(c.enable)>(dlsym(h, "cuptiActivityEnable"));
    c.disable = reinterpret_cast<decltype(c.disable)>(dlsym(h, "cuptiActivityDisable"));
    c.flush_all = reinterpret_cast<decltype(c.flush_all)>(dlsym(h, "cuptiActivityFlushAll"));
    c.next_record = reinterpret_cast<decltype(c.next_record)>(dlsym(h, "cuptiActivityGetNextRecord"));
    if (!c.register_callbacks || !c.enable || !c.disable || !c.flush_all || !c.next_record) {
      c.error = absl::StrCat(soname, " lacks the activity API");
    }
    return c;
  }();
  return cupti;
}

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = size_t{1} << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  while (Load().next_record(buffer, valid, &record) == CUPTI_SUCCESS) {
    switch (record->kind) {
      case CUPTI_ACTIVITY_KIND_KERNEL:
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
        ++kernels;
        break;
      case CUPTI_ACTIVITY_KIND_MEMCPY:
      case CUPTI_ACTIVITY_KIND_MEMSET:
        ++copies;
        break;
      default:
        break;
    }
  }
  std::free(buffer);
}

constexpr CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                         CUPTI_ACTIVITY_KIND_MEMSET};

}  // namespace

absl::Status KernelCounter::Start() {
  const Cupti& c = Load();
  if (!c.error.empty()) return absl::UnavailableError(c.error);
  static const CUptiResult registered = c.register_callbacks(BufferRequested, BufferCompleted);
  if (registered != CUPTI_SUCCESS) return absl::UnavailableError(absl::StrCat("CUPTI: error ", registered));
  cudaDeviceSynchronize();
  for (CUpti_ActivityKind kind : kKinds) {
    if (CUptiResult r = c.enable(kind); r != CUPTI_SUCCESS) return absl::UnavailableError(absl::StrCat("CUPTI: error ", r));
  }
  kernels = 0, copies = 0;
  return absl::OkStatus();
}

KernelCount KernelCounter::Stop() {
  const Cupti& c = Load();
  cudaDeviceSynchronize();
  c.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  for (CUpti_ActivityKind kind : kKinds) c.disable(kind);
  return KernelCount{kernels.load(), copies.load()};
}

}  // namespace daedalus
