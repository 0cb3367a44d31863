#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <memory>

#include "kernels/cpu/tier.h"
#include "kernels/cpu_probes.h"

namespace daedalus {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best FLOP/s over `reps` runs of `probe` on every thread at once.
double Peak(double (*probe)(int64_t), int reps) {
  constexpr int64_t kIters = 20000000;
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    double flops = 0;
    const double t0 = Now();
#pragma omp parallel reduction(+ : flops)
    flops += probe(kIters);
    best = std::max(best, flops / (Now() - t0));
  }
  return best;
}

}  // namespace

ReadProbe::ReadProbe(size_t bytes) : buf_(new float[bytes / sizeof(float) / 64 * 64]), n_(bytes / sizeof(float) / 64 * 64) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n_; ++i) buf_[i] = static_cast<float>(i & 1023);
}

ReadProbe::~ReadProbe() { delete[] buf_; }

double ReadProbe::Pass() {
  const cpu::TierKernels& tier = cpu::Kernels();
  float total = 0;
  const double t0 = Now();
#pragma omp parallel reduction(+ : total)
  {
    const size_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const size_t begin = n_ / threads * t / 64 * 64, end = t + 1 == threads ? n_ : n_ / threads * (t + 1) / 64 * 64;
    total += tier.read_probe(buf_ + begin, end - begin);
  }
  const double dt = Now() - t0;
  volatile float sink = total;
  (void)sink;
  bytes_read_ += static_cast<double>(bytes());
  seconds_ += dt;
  return static_cast<double>(bytes()) / dt;
}

double ReadProbe::Best(int passes) {
  double best = 0;
  for (int pass = 0; pass < passes; ++pass) best = std::max(best, Pass());
  return best;
}

double MeasureFp32Peak() { return Peak(cpu::Kernels().fp32_fma_probe, 3); }
double MeasureBf16Peak() { return Peak(cpu::Kernels().bf16_probe, 3); }
double MeasureBf16AttentionPeak() {
  return cpu::Kernels().dot_rows_bf16 != nullptr ? Peak(cpu::Avx512Bf16Kernels().bf16_probe, 3) : MeasureFp32Peak();
}

}  // namespace daedalus
