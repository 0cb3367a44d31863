// What this machine can do, measured with the active tier's instructions on all OpenMP threads
// (the limits `daedalus bench` reports its figures against). Each takes about a second.
#pragma once

#include <cstddef>

namespace daedalus {

// DRAM read bandwidth: all threads streaming a buffer far beyond the caches (1 GiB) with wide
// loads, one pass at a time over a buffer kept for the probe's life (written once, so it is
// resident: `bytes()` of it count in the process's memory). Interleaved with a timed workload,
// its passes measure the bandwidth a shared machine left while the workload ran.
class ReadProbe {
 public:
  explicit ReadProbe(size_t bytes = size_t{1} << 30);
  ~ReadProbe();
  ReadProbe(const ReadProbe&) = delete;
  ReadProbe& operator=(const ReadProbe&) = delete;

  double Pass();  // bytes/s of one pass on all threads; also adds to the totals below
  double Best(int passes);  // the best of `passes` passes
  double bytes_read() const { return bytes_read_; }
  double seconds() const { return seconds_; }
  size_t bytes() const { return n_ * sizeof(float); }

 private:
  float* buf_;
  size_t n_;
  double bytes_read_ = 0, seconds_ = 0;
};

// FLOP/s (2 per multiply-add) of independent float FMA chains, best of 3.
double MeasureFp32Peak();
// FLOP/s of the unit the tier's bf16 GEMM uses: the tiles' TDPBF16PS on amx, VDPBF16PS on
// avx512bf16, the float FMA on tiers that widen bf16 weights to float.
double MeasureBf16Peak();
// FLOP/s of the unit absorbed attention over a bf16 cache uses: VDPBF16PS where the tier scores
// bf16 rows in place (HasBf16Attention, kernels/ops.h; on amx too, whose tiles it does not use),
// else the float FMA.
double MeasureBf16AttentionPeak();

}  // namespace daedalus
