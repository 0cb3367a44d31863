// What this machine can do, measured with the active tier's instructions on all OpenMP threads
// (the limits `daedalus bench` reports its figures against). Each takes about a second.
#pragma once

namespace daedalus {

// Bytes/s of all threads streaming 1 GiB (far beyond the caches) with wide loads, best of 5.
double MeasureReadBandwidth();
// FLOP/s (2 per multiply-add) of independent float FMA chains, best of 3.
double MeasureFp32Peak();
// FLOP/s of the unit the tier's bf16 GEMM uses: VDPBF16PS on avx512bf16 (and amx, whose GEMM
// runs on it), the float FMA on tiers that widen bf16 weights to float.
double MeasureBf16Peak();

}  // namespace daedalus
