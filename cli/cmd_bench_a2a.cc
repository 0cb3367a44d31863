// `daedalus bench-a2a`: expert dispatch + combine (plans and packing included) against a raw
// MPI_Alltoallv of the same bytes, in the same run, on DeepSeek-V3 shapes by default. Run it
// under mpirun; alone it is a world of one.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/request_io.h"
#include "routing/dispatch.h"
#include "routing/mpi_raw.h"
#include "routing/mpi_transport.h"

namespace daedalus {
namespace {

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Timing {
  double ours_s = 1e30, raw_s = 1e30;  // best over iterations, this rank
  size_t bytes = 0;                    // sent by this rank per call
};

// Mean over ranks of each rank's best time, in microseconds.
double MeanMicros(Transport& t, double seconds) {
  std::vector<int64_t> v = {static_cast<int64_t>(seconds * 1e6)};
  if (!t.AllReduceSum(v, "bench timing").ok()) AbortMpi(1);
  return static_cast<double>(v[0]) / t.world_size();
}

}  // namespace

Command AddBenchA2aCommand(CLI::App& app) {
  struct Flags {
    int64_t hidden = 7168, topk = 8, experts = 256;
    std::string tokens = "128,4096";
    int iters = 3, redundant = 0;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--hidden", f->hidden, "activation width (floats)");
  app.add_option("--tokens", f->tokens, "tokens per rank, comma-separated");
  app.add_option("--topk", f->topk, "experts per token");
  app.add_option("--experts", f->experts, "routed experts");
  app.add_option("--iters", f->iters, "timed iterations (the best is reported)");
  app.add_option("--redundant-experts", f->redundant, "extra expert replicas");
  return [f]() {
    auto token_counts = ParseIdList(f->tokens);
    if (!token_counts.ok() || token_counts->empty()) return Fail("--tokens: expected comma-separated counts");
    if (absl::Status s = InitMpi(nullptr, nullptr); !s.ok()) return Fail(std::string(s.message()));
    auto made = MakeMpiTransport();
    if (!made.ok()) return Fail(std::string(made.status().message()));
    Transport& t = **made;
    auto placement = ComputePlacement(static_cast<int>(f->experts), t.world_size(), f->redundant, {});
    if (!placement.ok()) return Fail(std::string(placement.status().message()));
    const int me = t.rank();
    if (me == 0) {
      std::printf("bench-a2a: %d ranks, hidden %lld floats, top-%lld of %lld experts, best of %d\n", t.world_size(),
                  static_cast<long long>(f->hidden), static_cast<long long>(f->topk),
                  static_cast<long long>(f->experts), f->iters);
      std::printf("%8s %-8s %12s %10s %12s %10s %7s\n", "tokens", "phase", "ours us", "ours GB/s", "raw us",
                  "raw GB/s", "ratio");
    }
    for (int32_t n : *token_counts) {
      std::mt19937 rng(1234 + me);
      std::uniform_real_distribution<float> value(-1, 1);
      std::vector<float> x(static_cast<size_t>(n) * f->hidden);
      for (auto& v : x) v = value(rng);
      std::vector<int32_t> ids;
      std::vector<int32_t> all(f->experts);
      for (int64_t i = 0; i < n; ++i) {
        for (int32_t e = 0; e < f->experts; ++e) all[e] = e;
        std::shuffle(all.begin(), all.end(), rng);
        std::sort(all.begin(), all.begin() + f->topk);
        ids.insert(ids.end(), all.begin(), all.begin() + f->topk);
      }
      ExpertExchange exchange(t, *placement, f->hidden, f->experts);
      ReceivedRows rows;
      std::vector<const float*> slots;
      Timing dispatch, combine;
      const size_t row_bytes = sizeof(RowHeader) + f->hidden * sizeof(float);
      for (int it = 0; it <= f->iters; ++it) {  // the first round warms up
        (void)t.Barrier("bench");
        double t0 = Seconds();
        if (absl::Status s = exchange.Dispatch(x.data(), n, f->topk, ids.data(), "bench dispatch", rows); !s.ok()) {
          return Fail(std::string(s.message()));
        }
        const double d = Seconds() - t0;
        (void)t.Barrier("bench");
        t0 = Seconds();
        // The experts would write their outputs through these pointers; the exchange alone is timed.
        (void)exchange.CombineOutputs(rows);
        if (absl::Status s = exchange.Combine("bench combine", slots); !s.ok()) return Fail(std::string(s.message()));
        const double c = Seconds() - t0;
        if (it > 0) {
          dispatch.ours_s = std::min(dispatch.ours_s, d);
          combine.ours_s = std::min(combine.ours_s, c);
        }
      }
      // The same bytes per destination through MPI_Alltoallv: what dispatch sent, then what
      // combine sent back.
      std::vector<size_t> to(t.world_size(), 0), back(t.world_size(), 0);
      for (int64_t slot = 0; slot < int64_t{n} * f->topk; ++slot)
        to[placement->RankFor(ids[slot], slot / f->topk, slot % f->topk)] += row_bytes;
      for (int64_t i = 0; i < rows.rows(); ++i) back[rows.headers[i].source_rank] += row_bytes;
      for (const size_t b : to) dispatch.bytes += b;
      for (const size_t b : back) combine.bytes += b;
      std::vector<uint8_t> send(std::max(dispatch.bytes, combine.bytes), 1), recv;
      std::vector<size_t> recv_bytes;
      for (int it = 0; it <= f->iters; ++it) {
        for (auto [timing, counts] : {std::pair{&dispatch, &to}, std::pair{&combine, &back}}) {
          (void)t.Barrier("bench");
          const double t0 = Seconds();
          if (absl::Status s = RawMpiAlltoallv(send.data(), *counts, recv, recv_bytes); !s.ok()) {
            return Fail(std::string(s.message()));
          }
          if (it > 0) timing->raw_s = std::min(timing->raw_s, Seconds() - t0);
        }
      }
      for (auto [name, timing] : {std::pair{"dispatch", &dispatch}, std::pair{"combine", &combine}}) {
        const double ours = MeanMicros(t, timing->ours_s), raw = MeanMicros(t, timing->raw_s);
        std::vector<int64_t> bytes = {static_cast<int64_t>(timing->bytes)};
        (void)t.AllReduceSum(bytes, "bench bytes");
        const double per_rank = static_cast<double>(bytes[0]) / t.world_size();
        if (me == 0) {
          std::printf("%8d %-8s %12.0f %10.2f %12.0f %10.2f %6.0f%%\n", n, name, ours, per_rank / ours / 1e3, raw,
                      per_rank / raw / 1e3, 100 * raw / ours);
        }
      }
    }
    made->reset();
    FinalizeMpi();
    return 0;
  };
}

}  // namespace daedalus
