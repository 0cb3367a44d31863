// `daedalus bench-a2a`: expert dispatch + combine (plans and packing included) against a
// baseline of the same bytes in the same run, on DeepSeek-V3 shapes by default: a raw
// MPI_Alltoallv for `--transport mpi`, `ucx_perftest -t tag_bw` (a pair of processes on
// loopback, at the largest per-peer message size) for `--transport ucx`. Run it under mpirun
// (which also bootstraps the UCX addresses); alone it is a world of one.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <set>

#include <sched.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/request_io.h"
#include "core/status.h"
#include "nlohmann/json.hpp"
#include "routing/dispatch.h"
#include "routing/mpi_raw.h"
#include "routing/mpi_transport.h"
#include "routing/ucx_transport.h"

namespace daedalus {
namespace {

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Timing {
  double ours_s = 1e30, raw_s = 1e30;  // best over iterations, this rank
  size_t bytes = 0;                    // sent by this rank per call
  size_t slot_row_bytes = 0;           // what one row per (token, slot) would send (0: as `bytes`)
};

// Mean over ranks of each rank's best time, in microseconds.
double MeanMicros(Transport& t, double seconds) {
  std::vector<int64_t> v = {static_cast<int64_t>(seconds * 1e6)};
  if (!t.AllReduceSum(v, "bench timing").ok()) AbortMpi(1);
  return static_cast<double>(v[0]) / t.world_size();
}

// Every rank's UCX address, exchanged over MPI, then the UCX world connected.
absl::StatusOr<std::unique_ptr<UcxTransport>> ConnectUcx(Transport& mpi) {
  ASSIGN_OR_RETURN(auto ucx, CreateUcxTransport());
  const std::string& mine = ucx->address();
  std::string send;
  for (int r = 0; r < mpi.world_size(); ++r) send += mine;
  std::vector<size_t> send_bytes(mpi.world_size(), mine.size()), recv_bytes;
  std::vector<uint8_t> recv;
  RETURN_IF_ERROR(mpi.AllToAllV(send.data(), send_bytes, recv, recv_bytes, "UCX addresses"));
  std::vector<std::string> addresses;
  size_t at = 0;
  for (size_t n : recv_bytes) {
    addresses.emplace_back(reinterpret_cast<const char*>(recv.data() + at), n);
    at += n;
  }
  RETURN_IF_ERROR(ucx->Connect(mpi.rank(), addresses, 0));
  return ucx;
}

// ucx_perftest -t tag_bw between two processes on loopback: microseconds per message of
// `bytes` (the "overall" bandwidth of its final line), or a negative number when it cannot run.
double UcxPerftestMicros(size_t bytes) {
  const int port = 13000 + static_cast<int>(getpid() % 20000);
  // Enough messages for a bandwidth (512 MiB in all, 20 to 10,000 of them) after a tenth as
  // many unmeasured: three, as this ran before, measured mostly the first messages' setup (a
  // 28 KB message at 22 us where a thousand take 5 us each).
  const int64_t iters = std::clamp<int64_t>((int64_t{512} << 20) / std::max<size_t>(bytes, 1), 20, 10000);
  const std::string common =
      absl::StrCat(" -t tag_bw -s ", bytes, " -n ", iters, " -w ", std::max<int64_t>(2, iters / 10), " -p ", port);
  const std::string cmd = absl::StrCat("(ucx_perftest", common, " >/dev/null 2>&1 &) ; sleep 0.5; ucx_perftest 127.0.0.1", common,
                                       " 2>/dev/null");
  // The perftest processes inherit this rank's CPU binding (mpirun binds a rank to a core):
  // both on one core, server and client took turns (a 28 KB message at 248 us, 5 us unbound).
  // They get every CPU; this rank's binding is restored after.
  cpu_set_t bound, all;
  const bool rebind = sched_getaffinity(0, sizeof bound, &bound) == 0;
  CPU_ZERO(&all);
  for (long c = 0; c < std::min<long>(CPU_SETSIZE, sysconf(_SC_NPROCESSORS_CONF)); ++c) CPU_SET(c, &all);
  if (rebind) (void)sched_setaffinity(0, sizeof all, &all);
  FILE* p = popen(cmd.c_str(), "r");
  if (rebind) (void)sched_setaffinity(0, sizeof bound, &bound);
  if (p == nullptr) return -1;
  char line[512];
  double mb_per_s = -1;
  while (std::fgets(line, sizeof line, p) != nullptr) {
    double v[8];
    if (std::sscanf(line, "Final: %lf %lf %lf %lf %lf %lf %lf %lf", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) == 8) {
      mb_per_s = v[5];  // overall bandwidth, MB/s (2^20 bytes)
    }
  }
  pclose(p);
  return mb_per_s > 0 ? bytes / (mb_per_s * 1048576.0) * 1e6 : -1;
}

// Distinct hosts among the ranks (hostnames exchanged over MPI).
int CountHosts(Transport& mpi) {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  const std::string mine(name);
  std::string send;
  for (int r = 0; r < mpi.world_size(); ++r) send += mine;
  std::vector<size_t> send_bytes(mpi.world_size(), mine.size()), recv_bytes;
  std::vector<uint8_t> recv;
  if (!mpi.AllToAllV(send.data(), send_bytes, recv, recv_bytes, "hostnames").ok()) AbortMpi(1);
  std::set<std::string> hosts;
  size_t at = 0;
  for (size_t n : recv_bytes) {
    hosts.emplace(reinterpret_cast<const char*>(recv.data() + at), n);
    at += n;
  }
  return static_cast<int>(hosts.size());
}

}  // namespace

Command AddBenchA2aCommand(CLI::App& app) {
  struct Flags {
    int64_t hidden = 7168, topk = 8, experts = 256;
    std::string tokens = "128,4096";
    int iters = 3, redundant = 0;
    std::string transport = "mpi";
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--hidden", f->hidden, "activation width (floats)");
  app.add_option("--tokens", f->tokens, "tokens per rank, comma-separated");
  app.add_option("--topk", f->topk, "experts per token");
  app.add_option("--experts", f->experts, "routed experts");
  app.add_option("--iters", f->iters, "timed iterations (the best is reported)");
  app.add_option("--redundant-experts", f->redundant, "extra expert replicas");
  app.add_option("--transport", f->transport, "mpi (baseline: MPI_Alltoallv) or ucx (baseline: ucx_perftest -t tag_bw)")
      ->check(CLI::IsMember({"mpi", "ucx"}));
  app.add_flag("--json", f->json,
               "one JSON object (rank 0): the machine, the transport, ranks and hosts, and per token count and phase "
               "the bytes each rank sent and the times and bandwidths of ours and the baseline (for plan --calibrate)");
  return [f]() {
    auto token_counts = ParseIdList(f->tokens);
    if (!token_counts.ok() || token_counts->empty()) return Fail("--tokens: expected comma-separated counts");
    if (absl::Status s = InitMpi(nullptr, nullptr); !s.ok()) return Fail(std::string(s.message()));
    auto made = MakeMpiTransport();
    if (!made.ok()) return Fail(std::string(made.status().message()));
    std::unique_ptr<UcxTransport> ucx;
    if (f->transport == "ucx") {
      auto connected = ConnectUcx(**made);
      if (!connected.ok()) return Fail(std::string(connected.status().message()));
      ucx = std::move(*connected);
    }
    Transport& t = ucx ? static_cast<Transport&>(*ucx) : **made;
    const bool perftest = ucx != nullptr;
    auto placement = ComputePlacement(static_cast<int>(f->experts), t.world_size(), f->redundant, {});
    if (!placement.ok()) return Fail(std::string(placement.status().message()));
    const int me = t.rank();
    const int hosts = CountHosts(**made);
    nlohmann::ordered_json results = nlohmann::ordered_json::array();
    if (me == 0 && !f->json) {
      std::printf("bench-a2a: %d ranks over %s, hidden %lld floats, top-%lld of %lld experts, best of %d; baseline %s; %s\n",
                  t.world_size(), f->transport.c_str(), static_cast<long long>(f->hidden), static_cast<long long>(f->topk),
                  static_cast<long long>(f->experts), f->iters,
                  perftest ? "ucx_perftest -t tag_bw at the largest per-peer message" : "MPI_Alltoallv of the same bytes",
                  CpuModel().c_str());
      std::printf("%8s %-8s %12s %10s %12s %10s %7s %12s\n", "tokens", "phase", "ours us", "ours GB/s", "raw us",
                  "raw GB/s", "ratio", "bytes/slots");
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
      // The same bytes per destination through MPI_Alltoallv: what dispatch sent, then what
      // combine sent back. Only bytes that leave the rank: rows for its own experts stay in
      // place in our exchange, so the baseline does not move them either (nor count them).
      std::vector<size_t> to, back;
      for (int it = 0; it <= f->iters; ++it) {  // the first round warms up
        (void)t.Barrier("bench");
        double t0 = Seconds();
        if (absl::Status s = exchange.Dispatch(x.data(), n, f->topk, ids.data(), "bench dispatch", rows); !s.ok()) {
          return Fail(std::string(s.message()));
        }
        const double d = Seconds() - t0;
        to = exchange.sent_bytes();
        (void)t.Barrier("bench");
        t0 = Seconds();
        // The experts would write their outputs through these pointers; the exchange alone is timed.
        (void)exchange.CombineOutputs(rows);
        if (absl::Status s = exchange.Combine("bench combine", slots); !s.ok()) return Fail(std::string(s.message()));
        const double c = Seconds() - t0;
        back = exchange.sent_bytes();
        if (it > 0) {
          dispatch.ours_s = std::min(dispatch.ours_s, d);
          combine.ours_s = std::min(combine.ours_s, c);
        }
      }
      for (const size_t b : to) dispatch.bytes += b;
      for (const size_t b : back) combine.bytes += b;
      // What one row per (token, slot) would have moved: combine returns one row per slot that
      // crossed ranks, so summed over the ranks (below) its bytes are exactly that.
      dispatch.slot_row_bytes = combine.bytes;
      // A receive vector per phase, as the exchange keeps: one alternating between the two sizes
      // would zero its grown part every call.
      std::vector<uint8_t> send(std::max(dispatch.bytes, combine.bytes), 1), dispatch_recv, combine_recv;
      std::vector<size_t> recv_bytes;
      if (perftest) {
        // The largest message this rank sends to one peer, and ucx_perftest's time for it; the
        // baseline per rank is that per-message time (one peer, one direction).
        for (auto [timing, counts] : {std::pair{&dispatch, &to}, std::pair{&combine, &back}}) {
          size_t largest = 0, remote = 0;
          for (int r = 0; r < t.world_size(); ++r) {
            if (r == me) continue;
            largest = std::max(largest, (*counts)[r]);
            remote += (*counts)[r];
          }
          std::vector<int64_t> m = {static_cast<int64_t>(largest)};
          (void)(**made).AllReduceSum(m, "largest message");  // sum: the mean below
          const size_t mean = static_cast<size_t>(m[0] / t.world_size());
          double micros = -1;
          if (me == 0 && mean > 0) micros = UcxPerftestMicros(mean);
          std::vector<int64_t> shared = {static_cast<int64_t>(micros)};
          (void)(**made).AllReduceSum(shared, "perftest");
          // Scaled to the bytes this rank sends to other ranks (rows for its own experts never
          // leave it): perftest moves `mean` bytes in `micros`.
          timing->raw_s = shared[0] > 0 ? shared[0] * 1e-6 * static_cast<double>(remote) / std::max<size_t>(mean, 1) : 1e30;
        }
      }
      for (int it = 0; it <= f->iters && !perftest; ++it) {
        for (auto [timing, counts] : {std::pair{&dispatch, &to}, std::pair{&combine, &back}}) {
          (void)t.Barrier("bench");
          const double t0 = Seconds();
          std::vector<uint8_t>& recv = timing == &dispatch ? dispatch_recv : combine_recv;
          if (absl::Status s = RawMpiAlltoallv(send.data(), *counts, recv, recv_bytes); !s.ok()) {
            return Fail(std::string(s.message()));
          }
          if (it > 0) timing->raw_s = std::min(timing->raw_s, Seconds() - t0);
        }
      }
      for (auto [name, timing] : {std::pair{"dispatch", &dispatch}, std::pair{"combine", &combine}}) {
        const double ours = MeanMicros(t, timing->ours_s), raw = MeanMicros(t, timing->raw_s);
        std::vector<int64_t> bytes = {static_cast<int64_t>(timing->bytes),
                                      static_cast<int64_t>(timing->slot_row_bytes ? timing->slot_row_bytes : timing->bytes)};
        (void)t.AllReduceSum(bytes, "bench bytes");
        const double per_rank = static_cast<double>(bytes[0]) / t.world_size();
        const double slot_rows = static_cast<double>(bytes[1]) / t.world_size();
        if (me == 0 && f->json) {
          results.push_back({{"tokens", n}, {"phase", name}, {"bytes_per_rank", per_rank}, {"ours_us", ours},
                             {"ours_gb_s", per_rank / ours / 1e3}, {"raw_us", raw}, {"raw_gb_s", per_rank / raw / 1e3},
                             {"slot_row_bytes_per_rank", slot_rows}});
        } else if (me == 0) {
          std::printf("%8d %-8s %12.0f %10.2f %12.0f %10.2f %6.0f%% %11.0f%%\n", n, name, ours, per_rank / ours / 1e3, raw,
                      per_rank / raw / 1e3, 100 * raw / ours, slot_rows > 0 ? 100 * per_rank / slot_rows : 100.0);
        }
      }
    }
    if (me == 0 && f->json) {
      nlohmann::ordered_json out;
      out["bench"] = "a2a";
      out["machine"] = {{"cpu", CpuModel()}};
      out["transport"] = f->transport;
      out["baseline"] = perftest ? "ucx_perftest -t tag_bw" : "MPI_Alltoallv";
      out["world_size"] = t.world_size();
      out["hosts"] = hosts;
      out["hidden"] = f->hidden;
      out["topk"] = f->topk;
      out["experts"] = f->experts;
      out["results"] = results;
      std::printf("%s\n", out.dump(2).c_str());
    }
    ucx.reset();
    made->reset();
    FinalizeMpi();
    return 0;
  };
}

}  // namespace daedalus
