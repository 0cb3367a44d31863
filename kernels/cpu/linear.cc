// The CPU GEMM driver: packs weights into panels, cuts every problem of a batch into panel work
// units shared out over the threads by cost, interleaves each block of tokens in the format the
// active tier reads, and calls the tier's micro-kernels (kernels/cpu/tier.h).
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "core/buffer.h"
#include "kernels/cpu/count_dispatch.h"
#include "kernels/cpu/tier.h"
#include "kernels/linear.h"
#include "kernels/ops.h"

namespace daedalus {

size_t WeightView::bytes() const {
  size_t b = static_cast<size_t>(rows * cols) * DTypeSize(dtype);
  if (dtype == DType::kF8E4M3) b += Fp8ScaleBlocks(rows) * Fp8ScaleBlocks(cols) * 4;
  return b;
}

float WeightView::at(int64_t r, int64_t c) const {
  switch (dtype) {
    case DType::kF32: {
      float v;
      std::memcpy(&v, static_cast<const uint8_t*>(data) + 4 * (r * cols + c), 4);
      return v;
    }
    case DType::kBF16: {
      bf16 v;
      if (data != nullptr) std::memcpy(&v, static_cast<const uint8_t*>(data) + 2 * (r * cols + c), 2);
      else v = static_cast<const bf16*>(packed)[PanelIndex(r, c, cols)];
      return Bf16ToF32(v);
    }
    case DType::kF8E4M3:
      return Fp8E4M3ToF32(fp8_code(r, c)) * scale_inv[(r / kFp8Block) * Fp8ScaleBlocks(cols) + c / kFp8Block];
  }
  return 0;
}

uint8_t WeightView::fp8_code(int64_t r, int64_t c) const {
  return data != nullptr ? static_cast<const uint8_t*>(data)[r * cols + c]
                         : static_cast<const uint8_t*>(packed)[PanelIndex(r, c, cols)];
}

namespace {

// Writes every element (r, c) of `w` to out[PanelIndex(r, c)], zero past the end.
template <typename T>
void PackPanels(const WeightView& w, T* out) {
  const auto* src = static_cast<const T*>(w.data);
  const int64_t panels = (w.rows + kPanelRows - 1) / kPanelRows, cols = PaddedCols(w.cols);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    for (int64_t r = p * kPanelRows; r < (p + 1) * kPanelRows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        out[PanelIndex(r, c, w.cols)] = r < w.rows && c < w.cols ? src[r * w.cols + c] : T{0};
  }
}

}  // namespace

void PackBf16(const WeightView& w, bf16* out) { PackPanels(w, out); }
void PackFp8(const WeightView& w, uint8_t* out) { PackPanels(w, out); }

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

namespace {

constexpr int64_t kKChunk = 1024;  // input features per pass: a 64 KB bf16 panel slice stays in L2

// Token blocks of the float tiers up to this many rows are interleaved by InterleaveRows
// (avx512's blocks are 12 at most, avx2's 5).
constexpr int kMaxFloatMr = 12;

// out[k · MR + i] = rows[i][k], zero for k in [K, Kp): input by input, each value written once
// and in order. Row by row with a run-time count, every write strided by the row count, the
// 4-token blocks of a decode step's experts packed at 0.4-0.5 of the speed (5 tokens: 0.9; one
// thread, 512 × 1,024 floats, -O3 for x86-64).
template <int MR>
void InterleaveRows(const float* const* rows, int64_t K, int64_t Kp, float* out) {
  for (int64_t k = 0; k < K; ++k)
    for (int i = 0; i < MR; ++i) out[k * MR + i] = rows[i][k];
  for (int64_t k = K; k < Kp; ++k)
    for (int i = 0; i < MR; ++i) out[k * MR + i] = 0.0f;
}

// Interleaves rows [m0, m0 + mr) of the problem's x by input, as the tier reads them: floats
// [K'][mr], or bf16 pairs [K' / 2][mr] (round to nearest even), K' = K padded to even with 0;
// on tiles (kernels/cpu/tier.h), [K / 32][mr rounded up to 16][32] bf16 (every block but the
// last is whole, so the block starts at m0 · K values).
void PackTokens(const LinearProblem& p, int64_t m0, int64_t mr, const cpu::TierKernels& tier, bool tiles, float* out) {
  const int64_t K = p.w.cols, Kp = PaddedCols(K);
  const float* rows[32];
  for (int64_t i = 0; i < mr; ++i) rows[i] = p.x_row(m0 + i);
  if (tier.pack_bf16_pairs != nullptr) {
    if (tiles) tier.pack_bf16_tiles(rows, static_cast<int>(mr), K, reinterpret_cast<uint16_t*>(out) + m0 * K);
    else tier.pack_bf16_pairs(rows, static_cast<int>(mr), K, reinterpret_cast<uint32_t*>(out) + m0 * Kp / 2);
    return;
  }
  float* block = out + m0 * Kp;
  if (mr <= kMaxFloatMr) {
    cpu::WithCount<kMaxFloatMr>(mr, [&](auto n) { InterleaveRows<decltype(n)::value>(rows, K, Kp, block); });
    return;
  }
  for (int64_t k = 0; k < Kp; ++k)
    for (int64_t i = 0; i < mr; ++i) block[k * mr + i] = k < K ? rows[i][k] : 0.0f;
}

// A problem's m rows cut into the fewest blocks of at most max_mr, of sizes that differ by at
// most one (64 rows at 12: 11, 11, 11, 11, 10, 10 rather than five of 12 and one of 4, whose
// few accumulators leave the dot-product unit waiting). Rows are independent: the cut changes
// no result.
struct TokenBlocks {
  TokenBlocks(int64_t m, int64_t max_mr) : count((m + max_mr - 1) / max_mr), base(m / count), extra(m % count), m(m) {}
  // On tiles: whole blocks of kTileBlockRows and what is left, so each block's copy starts
  // where the rows before it end (a tile block is padded to 16 rows, which the last alone needs).
  static TokenBlocks For(int64_t m, bool tiles, int64_t max_mr) {
    if (!tiles) return TokenBlocks(m, max_mr);
    TokenBlocks b(m, cpu::kTileBlockRows);
    b.base = cpu::kTileBlockRows;
    b.extra = 0;
    return b;
  }
  int64_t begin(int64_t b) const { return b * base + std::min(b, extra); }
  int64_t size(int64_t b) const { return std::min(base + (b < extra ? 1 : 0), m - begin(b)); }
  int64_t count, base, extra, m;
};

// Outputs past this many bytes are streamed (StreamedOutputBytes): the L2 caches of `threads`
// cores (1 MiB a core where the system does not say).
int64_t StreamedBytes(int threads) {
  static const int64_t l2 = [] {
    const long bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return bytes > 0 ? static_cast<int64_t>(bytes) : int64_t{1} << 20;
  }();
  return threads * l2;
}

// One panel of a problem over its token blocks [b0, b1).
struct Unit {
  int64_t problem, panel, b0, b1;
  double cost;
  bool pair = false;  // panels `panel` and `panel + 1` in one call (TierKernels::panel_fp8_pair)
};

// Token blocks [b0, b1) of a problem, one part of its rows, and a unit's cost over them.
struct PartBlocks {
  int64_t b0, b1;
  double cost;
};

// A unit's share of the work: one panel's weight bytes streamed plus its multiply-adds over
// `rows` tokens.
double UnitCost(int64_t cols, int64_t rows) {
  return static_cast<double>(kPanelRows * cols) * (4.0 + static_cast<double>(rows));
}

// Problems with fewer panels than this many per thread are also cut by token blocks, so that
// every thread has a share (a prefill's MoE gate is one panel over hundreds of tokens).
constexpr int64_t kUnitsPerThread = 4;
// Interleaved activations per part of a problem's token blocks where they outgrow L2. A
// 512-token prefill's projections and shared experts (1 MB of bf16 activations at 1,024 inputs)
// then run each part over every panel: in 19 alternating pairs (AMD EPYC, avx512bf16, 55-63 GB/s)
// the prefill was faster in 17, by 1.6% at the median, means 2,039 -> 2,069 tok/s; 128 and 512 KB
// measured the same, and the float avx512 tier the same either way.
constexpr int64_t kPartBytes = 256 << 10;

// Contiguous runs of units of about equal cost, one per thread: each thread streams its own run
// from the front, then steals from the back of the others'. A thread slowed by its memory
// channel or a neighbour then costs little at the barrier, and threads still stream long runs
// of one matrix (a shared counter, interleaving them, measured 10% slower at batch 64). Each
// unit is computed whole by one thread: who takes it changes nothing in the result.
class StealingRuns {
 public:
  StealingRuns(const std::vector<Unit>& units, double total, int threads)
      : threads_(threads), state_(new Run[threads]) {
    // end[r]: one past the last unit whose cost midpoint falls in thread r's share.
    std::vector<uint32_t> end(threads, 0);
    double before = 0;
    const double per_cost = total > 0 ? threads / total : 0;
    for (size_t i = 0; i < units.size(); ++i) {
      const double mid = before + units[i].cost / 2;
      before += units[i].cost;
      end[std::min(threads - 1, static_cast<int>(mid * per_cost))] = static_cast<uint32_t>(i + 1);
    }
    uint32_t front = 0;
    for (int r = 0; r < threads; ++r) {
      const uint32_t back = r + 1 == threads ? static_cast<uint32_t>(units.size()) : std::max(front, end[r]);
      state_[r].v.store(Pack(front, back));
      front = back;
    }
  }
  // The next unit for thread t; false once every run is empty.
  bool Next(int t, uint32_t* unit) {
    for (int k = 0; k < threads_; ++k)
      if (Take((t + k) % threads_, k == 0, unit)) return true;
    return false;
  }

 private:
  static uint64_t Pack(uint32_t front, uint32_t back) { return static_cast<uint64_t>(back) << 32 | front; }
  bool Take(int run, bool from_front, uint32_t* unit) {
    std::atomic<uint64_t>& state = state_[run].v;
    uint64_t v = state.load(std::memory_order_relaxed);
    for (;;) {
      const uint32_t f = static_cast<uint32_t>(v), b = static_cast<uint32_t>(v >> 32);
      if (f >= b) return false;
      if (state.compare_exchange_weak(v, from_front ? Pack(f + 1, b) : Pack(f, b - 1), std::memory_order_relaxed)) {
        *unit = from_front ? f : b - 1;
        return true;
      }
    }
  }
  // A run's front and back, on a cache line of its own: each thread updates its own run's line
  // once per unit, which a neighbour's line would make a cache-line exchange per unit.
  struct alignas(64) Run {
    std::atomic<uint64_t> v;
  };
  int threads_;
  std::unique_ptr<Run[]> state_;
};

// How one problem runs: its token blocks, its kernel and where its interleaved copy lives.
struct Plan {
  TokenBlocks blocks;
  void (*kernel)(const cpu::PanelCall&);
  bool tiles, fp8, decode_once;
  const void* x;  // the interleaved copy (shared with the problem before, or the float row itself)
  int64_t Kp;           // inputs padded to even
  size_t elem;          // bytes of a weight as packed
  const uint8_t* packed;
};

// Runs the packed problems in one parallel region: every problem's panels (over ranges of its
// token blocks where it has few panels) are work units, and each thread takes a contiguous run
// of units of about equal cost (weight bytes streamed plus multiply-adds), so one barrier serves
// them all.
void LinearPackedBatch(const std::vector<const LinearProblem*>& problems) {
  const cpu::TierKernels& tier = cpu::Kernels();
  thread_local std::vector<FloatBuffer> scratch;  // the calling thread's, reused across calls
  scratch.resize(std::max(scratch.size(), problems.size()));
  struct PackJob {
    const LinearProblem* problem;
    int64_t m0, mr;  // the token block's first row and rows
    float* out;      // the problem's interleaved copy
    bool tiles;
  };
  // The calling thread's lists, kept from call to call (a decode step makes ~50 calls), and
  // named by reference: inside the parallel region a thread_local would be each thread's own.
  thread_local std::vector<PackJob> own_pack_jobs;
  thread_local std::vector<Plan> own_plans;
  thread_local std::vector<Unit> own_units;
  std::vector<PackJob>& pack_jobs = own_pack_jobs;
  std::vector<Plan>& plans = own_plans;
  std::vector<Unit>& units = own_units;
  pack_jobs.clear();
  plans.clear();
  units.clear();
  double total = 0;
  // Inside another parallel region (max_active_levels 1) this region gets one thread, which
  // then takes every run.
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  for (size_t p = 0; p < problems.size(); ++p) {
    const LinearProblem& pr = *problems[p];
    const bool tiles = cpu::OnTiles(tier, pr.w.dtype, pr.w.cols), fp8 = pr.w.dtype == DType::kF8E4M3;
    const TokenBlocks blocks = TokenBlocks::For(pr.m, tiles, tier.max_mr);
    const bool decode_once = fp8 && tier.decode_fp8 != nullptr && (blocks.count > 1 || tiles);
    Plan plan{blocks,
              tiles ? (fp8 ? tier.tile_panel_fp8_decoded : tier.tile_panel_bf16)
                    : decode_once ? tier.panel_fp8_decoded : fp8 ? tier.panel_fp8 : tier.panel_bf16,
              tiles, fp8, decode_once, nullptr, PaddedCols(pr.w.cols), DTypeSize(pr.w.dtype),
              static_cast<const uint8_t*>(pr.w.packed)};
    // A problem reading the rows its predecessor read (gate then up, or two projections of one
    // input) shares its copy.
    const LinearProblem* prev = p > 0 ? problems[p - 1] : nullptr;
    if (prev != nullptr && prev->x == pr.x && prev->x_rows == pr.x_rows && prev->m == pr.m && prev->w.cols == pr.w.cols &&
        plans.back().tiles == tiles) {
      plan.x = plans.back().x;
    } else if (pr.m == 1 && !tier.bf16_activations && pr.w.cols % 2 == 0) {
      plan.x = pr.x_row(0);  // one float row is already in [K][1] layout
    } else {
      const int64_t rows = tiles ? cpu::TileRows(pr.m) : pr.m;
      scratch[p].resize(static_cast<size_t>(rows * PaddedCols(pr.w.cols)));
      plan.x = scratch[p].data();
      for (int64_t b = 0; b < blocks.count; ++b)
        pack_jobs.push_back({&pr, blocks.begin(b), blocks.size(b), scratch[p].data(), tiles});
    }
    plans.push_back(plan);
    const int64_t panels = (pr.w.rows + kPanelRows - 1) / kPanelRows;
    if (plan.fp8 && !plan.decode_once && !tiles && pr.m == 1 && tier.panel_fp8_pair != nullptr) {
      // One token's FP8 product: whole panels two to a call (each pair in one scale row), whose
      // eight accumulation chains keep the FMA units busy where one panel's four wait on their
      // latency. FP8 batch-1 decode (`bench --model <fp8> --batches 1`, builds with and without
      // alternating twelve times): a median 79% of its roofline without, 87% with.
      for (int64_t panel = 0; panel < panels;) {
        const bool pair = (panel + 2) * kPanelRows <= pr.w.rows;
        units.push_back({static_cast<int64_t>(p), panel, 0, 1, (pair ? 2 : 1) * UnitCost(pr.w.cols, 1), pair});
        total += units.back().cost;
        panel += pair ? 2 : 1;
      }
      continue;
    }
    // Parts of the token blocks: enough for every thread where the panels are few, and, where
    // the interleaved activations outgrow L2, parts of at most kPartBytes taken part by part
    // (every panel over one part, then the next), so a part stays in L2 across the panels
    // instead of streaming from L3 once per panel. Not for FP8 decoded once per panel chunk
    // (each part would decode it again) or tiles.
    const int64_t few = threads > 1 ? std::clamp<int64_t>(kUnitsPerThread * threads / panels, 1, blocks.count) : 1;
    const int64_t x_bytes = pr.m * plan.Kp * (tier.bf16_activations ? 2 : 4);
    const int64_t by_size = plan.decode_once || tiles ? 1 : std::clamp<int64_t>((x_bytes + kPartBytes - 1) / kPartBytes, 1, blocks.count);
    const int64_t parts = std::max(few, by_size);
    // Each part's token blocks and cost once, then the units with no division in the loop: a
    // batch-1 step lists ~4,200 units while the other threads wait, and three divisions a unit
    // cost 35-44 cycles each, 23-30 without (means over the step's calls, three runs each).
    thread_local std::vector<PartBlocks> part_blocks;  // used before the region only
    part_blocks.resize(static_cast<size_t>(parts));
    for (int64_t j = 0; j < parts; ++j) {
      const int64_t b0 = blocks.count * j / parts, b1 = blocks.count * (j + 1) / parts;
      part_blocks[j] = {b0, b1, UnitCost(pr.w.cols, blocks.begin(b1 - 1) + blocks.size(b1 - 1) - blocks.begin(b0))};
    }
    const int64_t outer = by_size > 1 ? parts : panels, inner = by_size > 1 ? panels : parts;
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t panel = by_size > 1 ? i : o;
        const PartBlocks& part = part_blocks[by_size > 1 ? o : i];
        units.push_back({static_cast<int64_t>(p), panel, part.b0, part.b1, part.cost});
        total += part.cost;
      }
  }
  int64_t out_bytes = 0;
  for (const LinearProblem* pr : problems) out_bytes += pr->m * pr->w.rows * static_cast<int64_t>(sizeof(float));
  const bool stream = out_bytes > StreamedBytes(threads);
  StealingRuns runs(units, total, threads);
  // Interleave the token blocks first: a decode step's few rows here, before the region, and a
  // prefill's shared out over the threads in it (a loop that ends in a barrier, which would cost
  // a decode step's product more than its packing).
  int64_t pack_values = 0;
  for (const PackJob& job : pack_jobs) pack_values += job.mr * job.problem->w.cols;
  const bool pack_here = pack_values < kShareOverThreads;
  if (pack_here)
    for (const PackJob& job : pack_jobs) PackTokens(*job.problem, job.m0, job.mr, tier, job.tiles, job.out);
#pragma omp parallel num_threads(threads)
  {
    if (!pack_here) {
#pragma omp for schedule(static)
      for (size_t j = 0; j < pack_jobs.size(); ++j) {
        const PackJob& job = pack_jobs[j];
        PackTokens(*job.problem, job.m0, job.mr, tier, job.tiles, job.out);
      }
    }
    const int t = omp_get_thread_num();
    std::vector<uint16_t> decoded;  // an FP8 panel chunk as bf16, for products of many token blocks
    for (uint32_t next; runs.Next(t, &next);) {
      const Unit& u = units[next];
      const LinearProblem& pr = *problems[u.problem];
      const Plan& plan = plans[u.problem];
      const int64_t K = pr.w.cols, Kp = plan.Kp, N = pr.w.rows, n0 = u.panel * kPanelRows;
      const size_t elem = plan.elem;
      const uint8_t* panel = plan.packed + u.panel * Kp * kPanelRows * elem;
      cpu::PanelCall call{};
      call.scales = plan.fp8 ? pr.w.scale_inv + (n0 / kFp8Block) * Fp8ScaleBlocks(K) : nullptr;
      call.valid = static_cast<int>(std::min<int64_t>(kPanelRows, N - n0));
      call.next_panel = Kp * kPanelRows * static_cast<int64_t>(elem);
      float* y[32];
      call.y = y;
      for (int64_t k0 = 0; k0 < Kp; k0 += kKChunk) {
        // The weights this thread multiplies next: the panel's next chunk, or the first chunk of
        // the next unit in its run, brought into L2 a share per token block while this chunk's
        // blocks multiply (PanelCall::ahead), so that the next unit's first block need not wait
        // on memory (a unit of one block streams its own weights). 32 bf16 experts of 8 tokens
        // (gate, up, down; avx2, 2 threads, alternating in one process, medians of 60, three
        // runs): 7.35, 6.95 and 7.99 ms without, 6.87, 6.53 and 7.32 ms with; 16 tokens 13.6 and
        // 12.0 ms; 64 tokens and FP8 weights (compute-bound there) unchanged. The same lines
        // prefetched in a burst at each block's start measured slower (7.35 -> 8.26 ms).
        const uint8_t* ahead = nullptr;
        int64_t ahead_bytes = 0;
        if (u.b1 - u.b0 > 1) {
          if (k0 + kKChunk < Kp) {
            ahead = panel + (k0 + kKChunk) / 2 * kPanelPair * elem;
            ahead_bytes = std::min(kKChunk, Kp - k0 - kKChunk) / 2 * kPanelPair * elem;
          } else if (next + 1 < units.size()) {
            const Unit& v = units[next + 1];
            const Plan& vp = plans[v.problem];
            ahead = vp.packed + v.panel * vp.Kp * kPanelRows * vp.elem;
            ahead_bytes = std::min(kKChunk, vp.Kp) / 2 * kPanelPair * vp.elem;
          }
        }
        const int64_t share = (ahead_bytes / (u.b1 - u.b0) + 63) / 64 * 64;
        call.k0 = k0;
        call.kn = std::min(kKChunk, Kp - k0);
        call.accumulate = k0 > 0;
        call.stream = stream && Kp <= kKChunk;  // a later k chunk would read y back
        call.panel = panel + k0 / 2 * kPanelPair * elem;
        if (plan.decode_once) {
          decoded.resize(static_cast<size_t>(kKChunk / 2 * kPanelPair));
          tier.decode_fp8(static_cast<const uint8_t*>(call.panel), call.kn / 2, decoded.data());
          call.panel = decoded.data();
        }
        for (int64_t b = u.b0; b < u.b1; ++b) {
          const int64_t at = std::min(ahead_bytes, (b - u.b0) * share);
          call.ahead = ahead == nullptr ? nullptr : reinterpret_cast<const char*>(ahead + at);
          call.ahead_bytes = std::min(ahead_bytes, at + share) - at;
          const int64_t m0 = plan.blocks.begin(b);
          call.mr = static_cast<int>(plan.blocks.size(b));
          // The block starts at m0 · K' values; within it, chunk k0 at k0 · mr values (k0 · mr
          // rounded up to 16 on tiles).
          call.x = plan.tiles ? static_cast<const void*>(static_cast<const uint16_t*>(plan.x) + m0 * K +
                                                         k0 * cpu::TileRows(call.mr))
                   : tier.bf16_activations
                       ? static_cast<const void*>(static_cast<const uint32_t*>(plan.x) + (m0 * Kp + k0 * call.mr) / 2)
                       : static_cast<const void*>(static_cast<const float*>(plan.x) + m0 * Kp + k0 * call.mr);
          for (int i = 0; i < call.mr; ++i) y[i] = pr.y_row(m0 + i) + n0;
          (u.pair ? tier.panel_fp8_pair : plan.kernel)(call);
        }
      }
    }
    _mm_sfence();  // this thread's streamed outputs reach memory before the region's barrier
  }
}

}  // namespace

namespace {

// Float weights through BLAS, one row of x by kF32Columns output columns a call (sgemv), the
// calls shared over the threads, each on one thread (OpenBLAS's OpenMP build runs on one thread
// inside a parallel region, or where OpenMP has one). Every call has the same shape whatever m
// is, so a row's result depends on its own inputs alone, not on the batch, the chunk it came in
// or the thread count: OpenBLAS's sgemm gives a row other bits with the row count of its call
// (0.3.21, Haswell kernels: a row alone against the same row among 4-9 others differed in 57 of
// 64 outputs, and within a padded block of 16 with its place in the block) and with its own
// threading (a 5 x 128 by 128 x 512 product on 1 and 2 threads). Float weights are for reference
// checkpoints; each row reads the weights again.
constexpr int64_t kF32Columns = 64;

void LinearF32(const LinearProblem& p) {
  const int64_t K = p.w.cols, N = p.w.rows, col_blocks = (N + kF32Columns - 1) / kF32Columns;
  const auto* w = static_cast<const float*>(p.w.data);
#pragma omp parallel for schedule(dynamic)
  for (int64_t item = 0; item < p.m * col_blocks; ++item) {
    const int64_t i = item / col_blocks, n0 = (item % col_blocks) * kF32Columns, nb = std::min(kF32Columns, N - n0);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(nb), static_cast<int>(K), 1.0f, w + n0 * K,
                static_cast<int>(K), p.x_row(i), 1, 0.0f, p.y_row(i) + n0, 1);
  }
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

int64_t StreamedOutputBytes() { return StreamedBytes(omp_get_max_threads()); }

void LinearBatch(const LinearProblem* problems, int64_t n) {
  std::vector<const LinearProblem*> fast;
  for (int64_t i = 0; i < n; ++i) {
    const LinearProblem& p = problems[i];
    if (p.m == 0 || p.w.rows == 0) continue;
    if (p.w.cols == 0) {  // an empty sum
      for (int64_t row = 0; row < p.m; ++row) std::fill_n(p.y_row(row), p.w.rows, 0.0f);
      continue;
    }
    if (p.w.dtype == DType::kF32) {
      LinearF32(p);
    } else if (p.w.packed != nullptr) {
      fast.push_back(&p);
    } else {
      LinearBf16Portable(p);
    }
  }
  if (!fast.empty()) LinearPackedBatch(fast);
}

void Linear(const float* x, int64_t m, const WeightView& w, float* y) {
  const LinearProblem p{x, m, w, y};
  LinearBatch(&p, 1);
}

}  // namespace daedalus
