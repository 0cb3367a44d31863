// CPU GEMM for bf16 weights. Weights stay bf16 in memory (half the bytes of float) in the
// panel layout of PackBf16 and are widened in registers with one shift and one mask per 32
// values; activations are broadcast one at a time (outer-product form), so there are no
// horizontal sums and no shuffles: per k, 2 widening ops serve 2 × 12 FMAs.
// GCC 12 warns falsely inside its own AVX-512 shift intrinsics (an undefined pass-through
// operand the unmasked form never reads).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "kernels/linear.h"

namespace daedalus {

size_t WeightView::bytes() const {
  size_t b = static_cast<size_t>(rows * cols) * DTypeSize(dtype);
  if (dtype == DType::kF8E4M3) b += Fp8ScaleBlocks(rows) * Fp8ScaleBlocks(cols) * 4;
  return b;
}

float WeightView::at(int64_t r, int64_t c) const {
  const int64_t panel_index = ((r / kPanelRows) * cols + c) * kPanelRows;  // start of k = c in r's panel
  const int64_t i = r % kPanelRows;
  switch (dtype) {
    case DType::kF32: {
      float v;
      std::memcpy(&v, static_cast<const uint8_t*>(data) + 4 * (r * cols + c), 4);
      return v;
    }
    case DType::kBF16: {
      bf16 v;
      if (data != nullptr) std::memcpy(&v, static_cast<const uint8_t*>(data) + 2 * (r * cols + c), 2);
      else v = static_cast<const bf16*>(packed)[panel_index + (i % 16) * 2 + i / 16];
      return Bf16ToF32(v);
    }
    case DType::kF8E4M3: {
      const uint8_t code = data != nullptr ? static_cast<const uint8_t*>(data)[r * cols + c]
                                           : static_cast<const uint8_t*>(packed)[panel_index + i];
      const int64_t scale_cols = Fp8ScaleBlocks(cols);
      return Fp8E4M3ToF32(code) * scale_inv[(r / kFp8Block) * scale_cols + c / kFp8Block];
    }
  }
  return 0;
}

int64_t PackedElements(int64_t rows, int64_t cols) {
  return (rows + kPanelRows - 1) / kPanelRows * kPanelRows * cols;
}

namespace {

// Writes element (r, k) of `w` to out[panel(r), k, slot(r)] for every element, zero past the end.
template <typename T, typename Slot>
void PackPanels(const WeightView& w, T* out, Slot slot) {
  const auto* src = static_cast<const T*>(w.data);
  const int64_t panels = (w.rows + kPanelRows - 1) / kPanelRows;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    T* dst = out + p * w.cols * kPanelRows;
    for (int64_t i = 0; i < kPanelRows; ++i) {
      const int64_t r = p * kPanelRows + i;
      for (int64_t k = 0; k < w.cols; ++k) dst[k * kPanelRows + slot(i)] = r < w.rows ? src[r * w.cols + k] : T{0};
    }
  }
}

}  // namespace

void PackBf16(const WeightView& w, bf16* out) {
  // Row i in the low half of lane i for rows 0-15, in the high half of lane i - 16 for 16-31.
  PackPanels(w, out, [](int64_t i) { return (i % 16) * 2 + i / 16; });
}

void PackFp8(const WeightView& w, uint8_t* out) {
  PackPanels(w, out, [](int64_t i) { return i; });
}

bool FitsFp8Kernel(const float* scale_inv, int64_t n_scales) {
  for (int64_t i = 0; i < n_scales; ++i)
    if (!(std::fabs(scale_inv[i]) < 128.0f)) return false;
  return true;
}

void LinearReference(const float* x, int64_t m, const WeightView& w, float* y) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t n = 0; n < w.rows; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < w.cols; ++k) acc += static_cast<double>(x[i * w.cols + k]) * w.at(n, k);
      y[i * w.rows + n] = static_cast<float>(acc);
    }
  }
}

#if defined(__AVX512F__)
namespace {

constexpr int kTokenBlock = 12;     // activation rows per kernel call: 24 accumulators in registers
constexpr int64_t kKChunk = 1024;   // input features per pass: a 64 KB panel slice stays in L2
// Prefetch distance in k: the hardware prefetcher alone left batch-1 decode well below the
// bandwidth the machine streams; 16 lines ahead recovers most of it.
constexpr int64_t kPrefetchAhead = 16;

// The MR × 32 accumulator tile both kernels share: loaded from y (or zero), updated by one
// k at a time (a rank-1 update: the token column broadcast against the widened weights), stored.
template <int MR>
struct Accumulators {
  __m512 lo[MR], hi[MR];

  __attribute__((always_inline)) void Load(float* const* y, __mmask16 mask_lo, __mmask16 mask_hi, bool accumulate) {
    for (int m = 0; m < MR; ++m) {
      lo[m] = accumulate ? _mm512_maskz_loadu_ps(mask_lo, y[m]) : _mm512_setzero_ps();
      hi[m] = accumulate ? _mm512_maskz_loadu_ps(mask_hi, y[m] + 16) : _mm512_setzero_ps();
    }
  }
  __attribute__((always_inline)) void Update(const float* xt_k, __m512 w_lo, __m512 w_hi) {
    for (int m = 0; m < MR; ++m) {
      const __m512 xb = _mm512_set1_ps(xt_k[m]);
      lo[m] = _mm512_fmadd_ps(xb, w_lo, lo[m]);
      hi[m] = _mm512_fmadd_ps(xb, w_hi, hi[m]);
    }
  }
  __attribute__((always_inline)) void Store(float* const* y, __mmask16 mask_lo, __mmask16 mask_hi) const {
    for (int m = 0; m < MR; ++m) {
      _mm512_mask_storeu_ps(y[m], mask_lo, lo[m]);
      _mm512_mask_storeu_ps(y[m] + 16, mask_hi, hi[m]);
    }
  }
};

// y[0..MR, 0..32) (+)= x[0..MR, k0..k0+kn) · panel — one 32-row panel, MR tokens; x comes
// interleaved as xt[k][MR] (PackTokens). Every output is one FMA chain over k in order:
// results do not depend on MR.
template <int MR>
void PanelKernel(const float* xt, const bf16* panel, int64_t kn, float* const* y, __mmask16 mask_lo,
                 __mmask16 mask_hi, bool accumulate) {
  Accumulators<MR> acc;
  acc.Load(y, mask_lo, mask_hi, accumulate);
  const __m512i high_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t k = 0; k < kn; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(panel + (k + kPrefetchAhead) * kPanelRows), _MM_HINT_T0);
    const __m512i raw = _mm512_loadu_si512(panel + k * kPanelRows);
    const __m512 w_lo = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
    const __m512 w_hi = _mm512_castsi512_ps(_mm512_and_si512(raw, high_mask));
    acc.Update(xt + k * MR, w_lo, w_hi);
  }
  acc.Store(y, mask_lo, mask_hi);
}

// The same for FP8 codes: a code sign-extended to 32 bits and shifted left by 20 puts its
// exponent and mantissa in a float's exponent and mantissa fields (sign bits 27-31 masked to
// bit 31), which is its value times 2^-120, subnormals included; the block scale times 2^120
// restores it. `scales` is the panel's row of block scales; k0 locates the 128-wide k blocks.
template <int MR>
void PanelKernelFp8(const float* xt, const uint8_t* panel, int64_t k0, int64_t kn, const float* scales,
                    float* const* y, __mmask16 mask_lo, __mmask16 mask_hi, bool accumulate) {
  Accumulators<MR> acc;
  acc.Load(y, mask_lo, mask_hi, accumulate);
  const __m512i keep = _mm512_set1_epi32(static_cast<int>(0x87f00000u));
  for (int64_t k = 0; k < kn;) {
    const int64_t block = (k0 + k) / kFp8Block;
    const int64_t end = std::min(kn, (block + 1) * kFp8Block - k0);
    const __m512 scale = _mm512_set1_ps(scales[block] * 0x1p120f);
    for (; k < end; ++k) {
      _mm_prefetch(reinterpret_cast<const char*>(panel + (k + 2 * kPrefetchAhead) * kPanelRows), _MM_HINT_T0);
      const uint8_t* codes = panel + k * kPanelRows;
      const __m512i c_lo = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
      const __m512i c_hi = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16)));
      const __m512 w_lo = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(c_lo, 20), keep)), scale);
      const __m512 w_hi = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(c_hi, 20), keep)), scale);
      acc.Update(xt + k * MR, w_lo, w_hi);
    }
  }
  acc.Store(y, mask_lo, mask_hi);
}

// y: the MR output rows, each already offset to the panel's first column.
using Kernel = void (*)(const float*, const bf16*, int64_t, float* const*, __mmask16, __mmask16, bool);
using KernelFp8 = void (*)(const float*, const uint8_t*, int64_t, int64_t, const float*, float* const*, __mmask16,
                           __mmask16, bool);

// Interleaves each block of kTokenBlock rows of x [m, K] as [K][rows of the block], so the
// kernel's broadcasts walk one contiguous stream (rows K floats apart would alias in L1).
// One block: rows [m0, m0 + mr) of the problem's x.
void PackTokens(const LinearProblem& p, int64_t m0, int64_t mr, float* out) {
  const int64_t K = p.w.cols;
  float* block = out + m0 * K;
  for (int64_t i = 0; i < mr; ++i) {
    const float* row = p.x_row(m0 + i);
    for (int64_t k = 0; k < K; ++k) block[k * mr + i] = row[k];
  }
}

template <int... MR>
constexpr std::array<Kernel, sizeof...(MR)> MakeKernels(std::integer_sequence<int, MR...>) {
  return {&PanelKernel<MR + 1>...};
}
constexpr auto kKernels = MakeKernels(std::make_integer_sequence<int, kTokenBlock>{});
template <int... MR>
constexpr std::array<KernelFp8, sizeof...(MR)> MakeKernelsFp8(std::integer_sequence<int, MR...>) {
  return {&PanelKernelFp8<MR + 1>...};
}
constexpr auto kKernelsFp8 = MakeKernelsFp8(std::make_integer_sequence<int, kTokenBlock>{});

struct Unit {
  int64_t problem, panel;
  double cost;
};

// Runs the packed problems in one parallel region: every problem's panels are work units, and
// each thread takes a contiguous run of units of about equal cost (weight bytes streamed plus
// multiply-adds), so one barrier serves them all.
void LinearPackedBatch(const std::vector<const LinearProblem*>& problems) {
  thread_local std::vector<FloatBuffer> scratch;  // the calling thread's, reused across calls
  scratch.resize(std::max(scratch.size(), problems.size()));
  std::vector<const float*> xt(problems.size());
  struct PackJob {
    const LinearProblem* problem;
    int64_t m0;  // first row of the token block
    float* out;  // the problem's interleaved copy
  };
  std::vector<PackJob> pack_jobs;
  std::vector<Unit> units;
  double total = 0;
  for (size_t p = 0; p < problems.size(); ++p) {
    const LinearProblem& pr = *problems[p];
    if (pr.m == 1) {
      xt[p] = pr.x_row(0);  // one row is already in [K][1] layout
    } else {
      scratch[p].resize(static_cast<size_t>(pr.m * pr.w.cols));
      xt[p] = scratch[p].data();
      for (int64_t m0 = 0; m0 < pr.m; m0 += kTokenBlock) pack_jobs.push_back({&pr, m0, scratch[p].data()});
    }
    const double cost = static_cast<double>(kPanelRows * pr.w.cols) * (4.0 + static_cast<double>(pr.m));  // ~bytes + FMAs
    for (int64_t panel = 0; panel * kPanelRows < pr.w.rows; ++panel) {
      units.push_back({static_cast<int64_t>(p), panel, cost});
      total += cost;
    }
  }
#pragma omp parallel
  {
    // Interleave the token blocks first, shared out over the threads (the loop ends in a barrier).
#pragma omp for schedule(static)
    for (size_t j = 0; j < pack_jobs.size(); ++j) {
      const PackJob& job = pack_jobs[j];
      PackTokens(*job.problem, job.m0, std::min<int64_t>(kTokenBlock, job.problem->m - job.m0), job.out);
    }
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    double before = 0;
    for (const Unit& u : units) {
      // A unit belongs to the thread whose share of the total cost holds the unit's midpoint.
      const double mid = before + u.cost / 2;
      before += u.cost;
      if (static_cast<int>(mid / total * threads) != t) continue;
      const LinearProblem& pr = *problems[u.problem];
      const int64_t K = pr.w.cols, N = pr.w.rows, n0 = u.panel * kPanelRows;
      const int64_t valid = std::min<int64_t>(kPanelRows, N - n0);
      const __mmask16 mask_lo = static_cast<__mmask16>(valid >= 16 ? 0xffff : (1u << valid) - 1);
      const __mmask16 mask_hi = static_cast<__mmask16>(valid <= 16 ? 0 : valid >= 32 ? 0xffff : (1u << (valid - 16)) - 1);
      const bool fp8 = pr.w.dtype == DType::kF8E4M3;
      const int64_t panel_offset = u.panel * K * kPanelRows;
      const float* scales = fp8 ? pr.w.scale_inv + (n0 / kFp8Block) * Fp8ScaleBlocks(K) : nullptr;
      for (int64_t k0 = 0; k0 < K; k0 += kKChunk) {
        const int64_t kn = std::min(kKChunk, K - k0);
        for (int64_t m0 = 0; m0 < pr.m; m0 += kTokenBlock) {
          const int64_t mr = std::min<int64_t>(kTokenBlock, pr.m - m0);
          const float* x = xt[u.problem] + m0 * K + k0 * mr;
          float* y[kTokenBlock];
          for (int64_t i = 0; i < mr; ++i) y[i] = pr.y_row(m0 + i) + n0;
          if (fp8) {
            const auto* panel = static_cast<const uint8_t*>(pr.w.packed) + panel_offset + k0 * kPanelRows;
            kKernelsFp8[mr - 1](x, panel, k0, kn, scales, y, mask_lo, mask_hi, k0 > 0);
          } else {
            const auto* panel = static_cast<const bf16*>(pr.w.packed) + panel_offset + k0 * kPanelRows;
            kKernels[mr - 1](x, panel, kn, y, mask_lo, mask_hi, k0 > 0);
          }
        }
      }
    }
  }
}

}  // namespace
#endif

namespace {

void LinearF32(const LinearProblem& p) {
  const int64_t K = p.w.cols, N = p.w.rows;
  // BLAS wants dense rows: gather and scatter around it when the problem uses row pointers.
  std::vector<float> x_dense, y_dense;
  const float* x = p.x;
  float* y = p.y;
  if (p.x_rows != nullptr) {
    x_dense.resize(p.m * K);
    for (int64_t i = 0; i < p.m; ++i) std::memcpy(&x_dense[i * K], p.x_rows[i], K * sizeof(float));
    x = x_dense.data();
  }
  if (p.y_rows != nullptr) {
    y_dense.resize(p.m * N);
    y = y_dense.data();
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(p.m), static_cast<int>(N), static_cast<int>(K),
              1.0f, x, static_cast<int>(K), static_cast<const float*>(p.w.data), static_cast<int>(K), 0.0f, y,
              static_cast<int>(N));
  if (p.y_rows != nullptr)
    for (int64_t i = 0; i < p.m; ++i) std::memcpy(p.y_rows[i], &y_dense[i * N], N * sizeof(float));
}

// Portable path: widen one weight row at a time and accumulate in float.
void LinearBf16Portable(const LinearProblem& p) {
  const auto* wd = p.w.dtype == DType::kBF16 ? static_cast<const uint16_t*>(p.w.data) : nullptr;
  const int64_t K = p.w.cols, N = p.w.rows;
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(K));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      if (wd != nullptr) Bf16ToF32(wd + n * K, row.data(), static_cast<size_t>(K));
      else for (int64_t k = 0; k < K; ++k) row[k] = p.w.at(n, k);
      for (int64_t i = 0; i < p.m; ++i) {
        const float* xi = p.x_row(i);
        float acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += xi[k] * row[k];
        p.y_row(i)[n] = acc;
      }
    }
  }
}

}  // namespace

void LinearBatch(const LinearProblem* problems, int64_t n) {
  std::vector<const LinearProblem*> fast;
  for (int64_t i = 0; i < n; ++i) {
    const LinearProblem& p = problems[i];
    if (p.m == 0 || p.w.rows == 0) continue;
    if (p.w.dtype == DType::kF32) {
      LinearF32(p);
#if defined(__AVX512F__)
    } else if (p.w.packed != nullptr) {
      fast.push_back(&p);
#endif
    } else {
      LinearBf16Portable(p);
    }
  }
#if defined(__AVX512F__)
  if (!fast.empty()) LinearPackedBatch(fast);
#endif
}

void Linear(const float* x, int64_t m, const WeightView& w, float* y) {
  const LinearProblem p{x, m, w, y};
  LinearBatch(&p, 1);
}

}  // namespace daedalus
