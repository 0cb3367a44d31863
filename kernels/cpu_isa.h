// Which x86-64 kernel tier the CPU path runs: detected once at start (cpuid plus the OS's
// XSAVE state; for AMX also the tile permission from arch_prctl), lowered on request with
// DAEDALUS_CPU_ISA=generic|avx2|avx512|avx512bf16|amx. One binary runs on any x86-64 machine:
// only the tier's own translation unit is compiled for its instructions.
// Thread-safety: select before the first kernel runs; reading the tier is safe from any thread.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace daedalus {

// Ordered: each tier's instructions include the ones below it.
enum class CpuIsa {
  kGeneric,     // baseline x86-64 (SSE2): plain C++ loops
  kAvx2,        // AVX2 + FMA: 8-wide float FMA on widened weights
  kAvx512,      // AVX-512 F/BW/VL/DQ: 16-wide float FMA on widened weights
  kAvx512Bf16,  // + AVX512_BF16: activations rounded to bf16, VDPBF16PS, float accumulation
  kAmx,         // + AMX-BF16 tiles (TDPBF16PS)
};

const char* CpuIsaName(CpuIsa isa);  // "avx512bf16", ...
absl::StatusOr<CpuIsa> ParseCpuIsa(const std::string& name);

// The best tier this machine and its OS support.
CpuIsa DetectedCpuIsa();
// AVX512_VBMI byte permutes (with the OS's AVX-512 state): the avx512bf16 tier then decodes FP8
// weights by table (Ice Lake, Sapphire Rapids, Zen 4; not Cooper Lake).
bool HasAvx512Vbmi();
// The CPU features `isa` needs that this machine lacks, e.g. "avx512_bf16"; empty if none.
std::string MissingCpuFeatures(CpuIsa isa);

// Makes `isa` the tier every kernel uses. InvalidArgument naming the tier and the missing CPU
// feature if the machine lacks it.
absl::Status SelectCpuIsa(CpuIsa isa);
// Selects the tier DAEDALUS_CPU_ISA names, or the detected one when it is unset. Programs call
// this at start to report a bad value as an error; the first kernel call does it otherwise
// (and aborts with the same message).
absl::Status InitCpuIsaFromEnvironment();
CpuIsa ActiveCpuIsa();

// "avx512bf16 (VDPBF16PS, bf16 activations)": the tier and what its GEMM runs on.
std::string CpuIsaDescription(CpuIsa isa);

}  // namespace daedalus
