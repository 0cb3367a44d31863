// CPU GEMM for bf16 weights: weights stay bf16 in memory (half the bytes of float) and are
// widened in registers. A 32-bit lane of bf16 data holds elements 2i (low half) and 2i+1
// (high half): `lane << 16` is element 2i as float and `lane & 0xffff0000` is element 2i+1,
// so the activations are permuted once per call into [even 16 | odd 16] per 32-element chunk
// and no shuffles are needed in the inner loop.
// GCC 12 warns falsely inside its own _mm512_reduce_add_ps (an undefined upper half it never reads).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "kernels/linear.h"

namespace daedalus {

float WeightView::at(int64_t r, int64_t c) const {
  const int64_t i = r * cols + c;
  if (dtype == DType::kBF16) {
    bf16 v;
    std::memcpy(&v, static_cast<const uint8_t*>(data) + 2 * i, 2);
    return Bf16ToF32(v);
  }
  float v;
  std::memcpy(&v, static_cast<const uint8_t*>(data) + 4 * i, 4);
  return v;
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

constexpr int kRowBlock = 4;    // weight rows per tile
constexpr int kTokenBlock = 4;  // activation rows per tile
constexpr int64_t kTokenChunk = 96;
// Weight elements prefetched ahead of the loads: the hardware prefetcher alone left batch-1
// decode at ~14 GB/s on a machine that streams ~19 GB/s; 1 KB ahead per row recovers most of it.
constexpr int64_t kPrefetchAhead = 512;  // activation rows kept hot in L2 while weights stream

// Accumulates a RM×RN tile of y over all of K (K % 32 == 0).
template <int RM, int RN>
inline void Tile(const float* xp, int64_t K, const uint16_t* w, float* y, int64_t ldy) {
  __m512 acc[RM][RN];
  for (int m = 0; m < RM; ++m)
    for (int r = 0; r < RN; ++r) acc[m][r] = _mm512_setzero_ps();
  const __m512i high_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t k = 0; k < K; k += 32) {
    __m512 lo[RN], hi[RN];
    for (int r = 0; r < RN; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k + kPrefetchAhead), _MM_HINT_T0);
      __m512i raw = _mm512_loadu_si512(w + r * K + k);
      lo[r] = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
      hi[r] = _mm512_castsi512_ps(_mm512_and_si512(raw, high_mask));
    }
    for (int m = 0; m < RM; ++m) {
      __m512 xe = _mm512_loadu_ps(xp + m * K + k);
      __m512 xo = _mm512_loadu_ps(xp + m * K + k + 16);
      for (int r = 0; r < RN; ++r) {
        acc[m][r] = _mm512_fmadd_ps(xe, lo[r], acc[m][r]);
        acc[m][r] = _mm512_fmadd_ps(xo, hi[r], acc[m][r]);
      }
    }
  }
  for (int m = 0; m < RM; ++m)
    for (int r = 0; r < RN; ++r) y[m * ldy + r] = _mm512_reduce_add_ps(acc[m][r]);
}

template <int RN>
inline void TileRows(const float* xp, int64_t rm, int64_t K, const uint16_t* w, float* y, int64_t ldy) {
  switch (rm) {
    case 4: Tile<4, RN>(xp, K, w, y, ldy); break;
    case 3: Tile<3, RN>(xp, K, w, y, ldy); break;
    case 2: Tile<2, RN>(xp, K, w, y, ldy); break;
    default: Tile<1, RN>(xp, K, w, y, ldy); break;
  }
}

void PermuteActivations(const float* x, int64_t m, int64_t K, float* xp) {
  for (int64_t i = 0; i < m; ++i) {
    const float* src = x + i * K;
    float* dst = xp + i * K;
    for (int64_t k = 0; k < K; k += 32) {
      for (int j = 0; j < 16; ++j) {
        dst[k + j] = src[k + 2 * j];
        dst[k + 16 + j] = src[k + 2 * j + 1];
      }
    }
  }
}

constexpr int64_t kUnitRows = 16;  // weight rows per work unit handed to a thread

struct Unit {
  int64_t problem, row0, row1;
  double cost;
};

// Runs the fast-path problems in one parallel region: every problem's rows are cut into units,
// and each thread takes a contiguous run of units of about equal cost (weight bytes streamed
// plus multiply-adds), so one barrier serves them all.
void LinearBf16Batch(const std::vector<const LinearProblem*>& problems) {
  thread_local std::vector<std::vector<float>> scratch;  // the calling thread's, reused across calls
  std::vector<std::vector<float>>& permuted = scratch;     // worker threads must see this one
  permuted.resize(problems.size());
  std::vector<Unit> units;
  double total = 0;
  for (size_t p = 0; p < problems.size(); ++p) {
    const LinearProblem& pr = *problems[p];
    permuted[p].resize(static_cast<size_t>(pr.m * pr.w.cols));
    PermuteActivations(pr.x, pr.m, pr.w.cols, permuted[p].data());
    for (int64_t r = 0; r < pr.w.rows; r += kUnitRows) {
      const int64_t r1 = std::min(pr.w.rows, r + kUnitRows);
      const double cost = static_cast<double>((r1 - r) * pr.w.cols) * (4.0 + static_cast<double>(pr.m));
      units.push_back({static_cast<int64_t>(p), r, r1, cost});
      total += cost;
    }
  }
  std::vector<const float*> permuted_data;
  for (const auto& v : permuted) permuted_data.push_back(v.data());
#pragma omp parallel
  {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    // Unit u belongs to the thread whose cost interval holds the unit's midpoint.
    double before = 0;
    for (const Unit& u : units) {
      const double mid = before + u.cost / 2;
      before += u.cost;
      if (static_cast<int>(mid / total * threads) != t) continue;
      const LinearProblem& pr = *problems[u.problem];
      const int64_t K = pr.w.cols, N = pr.w.rows, m = pr.m;
      const float* xp = permuted_data[u.problem];
      const auto* wd = static_cast<const uint16_t*>(pr.w.data);
      for (int64_t m0 = 0; m0 < m; m0 += kTokenChunk) {
        const int64_t m1 = std::min(m, m0 + kTokenChunk);
        for (int64_t n = u.row0; n < u.row1; n += kRowBlock) {
          const int64_t rn = std::min<int64_t>(kRowBlock, u.row1 - n);
          for (int64_t i = m0; i < m1; i += kTokenBlock) {
            const int64_t rm = std::min<int64_t>(kTokenBlock, m1 - i);
            if (rn == kRowBlock) {
              TileRows<kRowBlock>(xp + i * K, rm, K, wd + n * K, pr.y + i * N + n, N);
            } else {
              for (int64_t r = 0; r < rn; ++r)
                TileRows<1>(xp + i * K, rm, K, wd + (n + r) * K, pr.y + i * N + n + r, N);
            }
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
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(p.m), static_cast<int>(p.w.rows),
              static_cast<int>(p.w.cols), 1.0f, p.x, static_cast<int>(p.w.cols), static_cast<const float*>(p.w.data),
              static_cast<int>(p.w.cols), 0.0f, p.y, static_cast<int>(p.w.rows));
}

// Portable path: widen one weight row at a time and accumulate in float.
void LinearBf16Portable(const LinearProblem& p) {
  const auto* wd = static_cast<const uint16_t*>(p.w.data);
  const int64_t K = p.w.cols, N = p.w.rows;
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(K));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      Bf16ToF32(wd + n * K, row.data(), static_cast<size_t>(K));
      for (int64_t i = 0; i < p.m; ++i) {
        const float* xi = p.x + i * K;
        float acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += xi[k] * row[k];
        p.y[i * N + n] = acc;
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
    } else if (p.w.cols % 32 == 0) {
      fast.push_back(&p);
#endif
    } else {
      LinearBf16Portable(p);
    }
  }
#if defined(__AVX512F__)
  if (!fast.empty()) LinearBf16Batch(fast);
#endif
}

void Linear(const float* x, int64_t m, const WeightView& w, float* y) {
  const LinearProblem p{x, m, w, y};
  LinearBatch(&p, 1);
}

}  // namespace daedalus
