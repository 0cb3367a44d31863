#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/cpu_isa.h"

namespace daedalus {
namespace {

struct Features {
  bool avx2 = false, fma = false, avx512 = false, avx512_bf16 = false, avx512_vbmi = false, amx_bf16 = false;
  bool os_avx = false, os_avx512 = false, os_amx = false;
};

uint64_t Xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// Linux keeps AMX tile data out of a thread's state until the process asks for it.
bool RequestAmxPermission() {
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

Features Probe() {
  Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28);
  f.fma = c & (1u << 12);
  if (osxsave && avx) {
    const uint64_t xcr0 = Xgetbv0();
    f.os_avx = (xcr0 & 0x6) == 0x6;                  // SSE and AVX state
    f.os_avx512 = f.os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
    f.os_amx = (xcr0 & 0x60000) == 0x60000;           // XTILECFG, XTILEDATA
  }
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  f.avx512 = avx512f && dq && bw && vl;
  f.avx512_vbmi = c & (1u << 1);
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
  f.amx_bf16 = amx_bf16 && amx_tile;
  __cpuid_count(7, 1, a, b, c, d);
  f.avx512_bf16 = a & (1u << 5);
  return f;
}

const Features& Cpu() {
  static const Features f = Probe();
  return f;
}

std::vector<std::string> Missing(CpuIsa isa) {
  const Features& f = Cpu();
  std::vector<std::string> missing;
  auto need = [&](bool have, const char* what) {
    if (!have) missing.push_back(what);
  };
  if (isa >= CpuIsa::kAvx2) {
    need(f.avx2, "avx2");
    need(f.fma, "fma");
    need(f.os_avx, "OS support for AVX state (XCR0)");
  }
  if (isa >= CpuIsa::kAvx512) {
    need(f.avx512, "avx512f/avx512bw/avx512vl/avx512dq");
    need(f.os_avx512, "OS support for AVX-512 state (XCR0)");
  }
  if (isa >= CpuIsa::kAvx512Bf16) need(f.avx512_bf16, "avx512_bf16");
  if (isa >= CpuIsa::kAmx) {
    need(f.amx_bf16, "amx_bf16/amx_tile");
    need(f.os_amx, "OS support for AMX tile state (XCR0)");
    if (missing.empty()) {
      static const bool permitted = RequestAmxPermission();
      need(permitted, "AMX tile permission (arch_prctl ARCH_REQ_XCOMP_PERM refused)");
    }
  }
  return missing;
}

std::atomic<int> active{-1};
std::mutex init_mutex;

}  // namespace

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kGeneric: return "generic";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx512Bf16: return "avx512bf16";
    case CpuIsa::kAmx: return "amx";
  }
  return "?";
}

std::string CpuIsaDescription(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kGeneric: return "generic (portable C++ loops)";
    case CpuIsa::kAvx2: return "avx2 (8-wide FMA, bf16/fp8 weights widened to float)";
    case CpuIsa::kAvx512: return "avx512 (16-wide FMA, bf16/fp8 weights widened to float)";
    case CpuIsa::kAvx512Bf16:
      return absl::StrCat("avx512bf16 (VDPBF16PS, bf16 activations, float accumulation; FP8 decoded by ",
                          HasAvx512Vbmi() ? "VPERMI2B table" : "shifts", ")");
    case CpuIsa::kAmx:
      return "amx (TDPBF16PS tiles for BF16 and FP8 weights whose inputs are a multiple of 32, FP8 decoded to bf16 per "
             "panel chunk; VDPBF16PS for the rest)";
  }
  return "?";
}

absl::StatusOr<CpuIsa> ParseCpuIsa(const std::string& name) {
  for (CpuIsa isa : {CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16, CpuIsa::kAmx})
    if (name == CpuIsaName(isa)) return isa;
  return absl::InvalidArgumentError(
      absl::StrCat("DAEDALUS_CPU_ISA=", name, ": unknown tier (expected generic, avx2, avx512, avx512bf16 or amx)"));
}

CpuIsa DetectedCpuIsa() {
  static const CpuIsa best = [] {
    for (CpuIsa isa : {CpuIsa::kAmx, CpuIsa::kAvx512Bf16, CpuIsa::kAvx512, CpuIsa::kAvx2})
      if (Missing(isa).empty()) return isa;
    return CpuIsa::kGeneric;
  }();
  return best;
}

bool HasAvx512Vbmi() { return Missing(CpuIsa::kAvx512).empty() && Cpu().avx512_vbmi; }

std::string MissingCpuFeatures(CpuIsa isa) { return absl::StrJoin(Missing(isa), ", "); }

absl::Status SelectCpuIsa(CpuIsa isa) {
  const std::string missing = MissingCpuFeatures(isa);
  if (!missing.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("CPU kernel tier ", CpuIsaName(isa),
                                                   " is not available on this machine: it lacks ", missing,
                                                   " (best available: ", CpuIsaName(DetectedCpuIsa()), ")"));
  }
  active.store(static_cast<int>(isa));
  return absl::OkStatus();
}

absl::Status InitCpuIsaFromEnvironment() {
  std::lock_guard<std::mutex> lock(init_mutex);
  const char* env = std::getenv("DAEDALUS_CPU_ISA");
  if (env == nullptr || *env == '\0') return SelectCpuIsa(DetectedCpuIsa());
  auto isa = ParseCpuIsa(env);
  if (!isa.ok()) return isa.status();
  return SelectCpuIsa(*isa);
}

CpuIsa ActiveCpuIsa() {
  int isa = active.load();
  if (isa < 0) {
    if (absl::Status s = InitCpuIsaFromEnvironment(); !s.ok()) {
      std::fprintf(stderr, "daedalus: error: %s\n", std::string(s.message()).c_str());
      std::abort();
    }
    isa = active.load();
  }
  return static_cast<CpuIsa>(isa);
}

}  // namespace daedalus
