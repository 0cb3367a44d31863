// `daedalus coordinator` (the coordinator alone, workers started elsewhere) and
// `daedalus serve` (a coordinator plus N workers on this machine, under mpirun).
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/coordinator_flags.h"
#include "cli/engine_flags.h"
#include "cli/worker_launcher.h"
#include "worker/make_model.h"
#include "worker/presets.h"

namespace daedalus {

namespace {

// The coordinator serves each stream on a thread of its own (gRPC's synchronous API). With
// hundreds of streams, glibc's per-thread malloc arenas (up to 8 per core) fragment and resident
// memory creeps up for minutes with nothing leaked (+17% over a 60 s soak at 256 streams after
// warm-up; the heap holds steady with 2 arenas, +2%). The coordinator's allocations are small
// and few per token, so two arenas cost no measurable speed. MALLOC_ARENA_MAX still overrides.
void LimitMallocArenas() {
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr) mallopt(M_ARENA_MAX, 2);
}

// SIGINT and SIGTERM are taken with sigwait; blocked before any thread starts so that every
// thread inherits the mask.
sigset_t BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

// Waits for SIGINT/SIGTERM or until `done()` holds; reports cluster state changes on stderr.
void WaitForStop(const sigset_t& signals, CoordinatorServer& server, const std::function<bool()>& done,
                 bool print_ready) {
  std::string last = "forming";
  bool announced = false;
  timespec tick{0, 100 * 1000 * 1000};
  while (!done()) {
    if (sigtimedwait(&signals, nullptr, &tick) > 0) return;
    const std::string now = server.state().state();
    if (now == last) continue;
    if (now == "serving" && print_ready && !announced) {
      std::printf("ready %s\n", server.address().c_str());
      std::fflush(stdout);
      announced = true;
    } else if (now == "serving") {
      std::fprintf(stderr, "daedalus: cluster serving again\n");
    } else if (now == "degraded") {
      auto status = server.state().Status(std::chrono::steady_clock::now());
      std::fprintf(stderr, "daedalus: %s\n", status.detail().c_str());
    }
    last = now;
  }
}

}  // namespace

Command AddCoordinatorCommand(CLI::App& app) {
  struct Flags {
    std::string model;
    int world_size = 0, prefill_world_size = 0, decode_world_size = 0;
    std::string kv_dtype;
    CoordinatorFlags coordinator;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--model", f->model, "checkpoint directory (only config.json is read)")->required();
  app.add_option("--world-size", f->world_size, "workers (MPI ranks) the cluster needs");
  app.add_option("--prefill-world-size", f->prefill_world_size,
                 "prefill/decode disaggregation (instead of --world-size): prefill workers (--role prefill), one EP group");
  app.add_option("--decode-world-size", f->decode_world_size,
                 "and decode workers (--role decode), another EP group");
  app.add_option("--kv-dtype", f->kv_dtype,
                 "latent cache format every worker must use: bf16 | f32 | fp8 (default: any, as the workers say)")
      ->check(CLI::IsMember({"bf16", "f32", "fp8"}));
  f->coordinator.Register(app);
  return [f]() {
    LimitMallocArenas();
    const sigset_t signals = BlockStopSignals();
    auto config = ModelConfig::Load(f->model + "/config.json");
    if (!config.ok()) return Fail(std::string(config.status().message()));
    const bool disaggregated = f->prefill_world_size > 0 || f->decode_world_size > 0;
    if (!disaggregated && f->world_size < 1) return Fail("give --world-size, or --prefill-world-size and --decode-world-size");
    if (disaggregated && f->world_size > 0 && f->world_size != f->prefill_world_size + f->decode_world_size) {
      return Fail(absl::StrCat("--prefill-world-size ", f->prefill_world_size, " plus --decode-world-size ", f->decode_world_size,
                               " workers do not make --world-size ", f->world_size));
    }
    CoordinatorOptions options;
    ServerOptions server;
    if (absl::Status s = f->coordinator.Options(*config, f->world_size, options, server); !s.ok()) return Fail(std::string(s.message()));
    options.kv_dtype = f->kv_dtype;
    options.prefill_world_size = f->prefill_world_size;
    options.decode_world_size = f->decode_world_size;
    auto started = CoordinatorServer::Start(f->model, options, server);
    if (!started.ok()) return Fail(std::string(started.status().message()));
    std::printf("listening %s\n", (*started)->address().c_str());
    if (!(*started)->metrics_address().empty()) std::printf("metrics http://%s/metrics\n", (*started)->metrics_address().c_str());
    if (!(*started)->http_address().empty()) std::printf("http http://%s/v1\n", (*started)->http_address().c_str());
    std::fflush(stdout);
    WaitForStop(signals, **started, [] { return false; }, true);
    (*started)->Shutdown();
    return 0;
  };
}

Command AddServeCommand(CLI::App& app) {
  struct Flags {
    std::string model, transport = "mpi";
    int workers = 2, max_restarts = 10, prefill_workers = 0, decode_workers = 0, prefill_threads = 0, decode_threads = 0;
    double collective_timeout_s = 60, relaunch_delay_s = 0.5;
    CoordinatorFlags coordinator;
    EngineFlags engine;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--model", f->model, "checkpoint directory (default: a generated tiny model)");
  CLI::Option* app_workers = app.add_option("--workers", f->workers, "worker processes (MPI ranks)");
  app.add_option("--prefill-workers", f->prefill_workers,
                 "prefill/decode disaggregation (instead of --workers): prefill workers, one EP group under a launcher "
                 "of their own; their sequences' latent pages go to the decode workers over UCX");
  app.add_option("--decode-workers", f->decode_workers, "and decode workers, another EP group");
  app.add_option("--prefill-threads", f->prefill_threads,
                 "threads of each prefill worker (default: --threads, else the cores split among the prefill workers)");
  app.add_option("--decode-threads", f->decode_threads,
                 "threads of each decode worker (default: --threads, else the cores split among all workers: decode steps "
                 "are short and memory-bound, and share cores with prefill)");
  app.add_option("--max-restarts", f->max_restarts, "times the workers are started again after they exit");
  app.add_option("--relaunch-delay", f->relaunch_delay_s,
                 "seconds before a worker that exited is started again (ucx: it joins the running cluster)");
  app.add_option("--collective-timeout", f->collective_timeout_s, "workers: seconds a rank waits in a collective");
  app.add_option("--transport", f->transport,
                 "the workers' data plane: mpi (the world mpirun forms; a lost worker restarts them all) or ucx "
                 "(one process per worker, addresses exchanged through the coordinator; elastic: a lost worker's "
                 "requests continue on the others, and it joins again when restarted)")
      ->check(CLI::IsMember({"mpi", "ucx"}));
  f->coordinator.Register(app);
  f->engine.Register(app);
  return [f, app_workers]() {
    LimitMallocArenas();
    const sigset_t signals = BlockStopSignals();
    const bool disaggregated = f->prefill_workers > 0 || f->decode_workers > 0;
    if (disaggregated && (f->prefill_workers < 1 || f->decode_workers < 1)) {
      return Fail(absl::StrCat("prefill/decode disaggregation needs at least one prefill and one decode worker (--prefill-workers ",
                               f->prefill_workers, ", --decode-workers ", f->decode_workers, ")"));
    }
    if (disaggregated && app_workers->count() > 0 && f->workers != f->prefill_workers + f->decode_workers) {
      return Fail(absl::StrCat("--prefill-workers ", f->prefill_workers, " plus --decode-workers ", f->decode_workers,
                               " do not make --workers ", f->workers));
    }
    if (disaggregated) f->workers = f->prefill_workers + f->decode_workers;
    if (f->workers < 1) return Fail("--workers must be at least 1");
    std::string model = f->model, scratch;
    if (model.empty()) {
      char dir[] = "/tmp/daedalus-serve-XXXXXX";
      if (mkdtemp(dir) == nullptr) return Fail("cannot create a temporary folder for the generated model");
      scratch = dir;
      model = scratch + "/tiny";
      auto config = PresetConfig("tiny");
      if (absl::Status s = config.ok() ? MakeModel(*config, MakeModelOptions{}, model) : config.status(); !s.ok()) {
        return Fail(std::string(s.message()));
      }
      std::fprintf(stderr, "daedalus serve: no --model; generated the tiny preset in %s\n", model.c_str());
    }
    auto cleanup = [&] {
      if (!scratch.empty()) std::filesystem::remove_all(scratch);
    };
    auto config = ModelConfig::Load(model + "/config.json");
    if (!config.ok()) return cleanup(), Fail(std::string(config.status().message()));
    CoordinatorOptions options;
    ServerOptions server;
    if (absl::Status s = f->coordinator.Options(*config, f->workers, options, server); !s.ok()) {
      return cleanup(), Fail(std::string(s.message()));
    }
    options.kv_dtype = f->engine.kv_dtype;
    options.prefill_world_size = f->prefill_workers;
    options.decode_world_size = f->decode_workers;
    auto started = CoordinatorServer::Start(model, options, server);
    if (!started.ok()) return cleanup(), Fail(std::string(started.status().message()));
    CoordinatorServer& coordinator = **started;
    if (!coordinator.metrics_address().empty()) {
      std::fprintf(stderr, "daedalus serve: metrics at http://%s/metrics\n", coordinator.metrics_address().c_str());
    }
    if (!coordinator.http_address().empty()) {
      std::fprintf(stderr, "daedalus serve: OpenAI-compatible API at http://%s/v1\n", coordinator.http_address().c_str());
    }
    const EngineFlags& e = f->engine;
    std::vector<std::string> worker_args = {
        "--coordinator", coordinator.address(), "--model", model, "--collective-timeout", absl::StrCat(f->collective_timeout_s),
        "--kv-dtype", e.kv_dtype, "--kv-cache-tokens", absl::StrCat(e.kv_tokens), "--kv-cache-mib", absl::StrCat(e.kv_mib),
        "--page-size", absl::StrCat(e.page_size), "--prefix-caching", e.prefix_caching,
        "--max-batch-tokens", absl::StrCat(e.max_batch_tokens), "--prefill-chunk", absl::StrCat(e.prefill_chunk),
        "--attention", e.attention, "--transport", f->transport, "--device", e.device,
        "--gpu-memory-fraction", absl::StrCat(e.gpu_memory_fraction), "--gpu-precision", e.gpu_precision,
        // The coordinator lives in this process: workers that lost it for this long have lost
        // their launcher too, and exit.
        "--reconnect-timeout", "30"};
    if (!f->coordinator.cluster_secret.empty()) setenv("DAEDALUS_CLUSTER_SECRET", f->coordinator.cluster_secret.c_str(), 1);
    // TLS: the workers verify the coordinator's certificate against itself (self-signed or a
    // leaf whose chain the workers' CA bundle holds is the user's business with `coordinator`).
    if (!f->coordinator.tls_cert.empty()) worker_args.insert(worker_args.end(), {"--tls-ca", f->coordinator.tls_cert});
    const int cores = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
    const int threads = e.threads > 0 ? e.threads : std::max(1, cores / f->workers);
    // One launcher per EP group: with disaggregation the prefill and the decode workers are two
    // worlds (two mpirun jobs, or two sets of ucx processes).
    std::vector<std::unique_ptr<WorkerLauncher>> launchers;
    auto launch = [&](int n, int n_threads, std::vector<std::string> args) {
      launchers.push_back(std::make_unique<WorkerLauncher>(WorkerLaunchOptions{
          n, n_threads, std::move(args), f->max_restarts, f->transport == "ucx",
          std::chrono::milliseconds(static_cast<int64_t>(f->relaunch_delay_s * 1000)), disaggregated}));
      launchers.back()->Start();
    };
    if (disaggregated) {
      const int prefill_threads = f->prefill_threads > 0 ? f->prefill_threads
                                  : e.threads > 0         ? e.threads
                                                          : std::max(1, cores / f->prefill_workers);
      const int decode_threads = f->decode_threads > 0 ? f->decode_threads : threads;
      for (const auto& [role, n, n_threads] : {std::tuple<std::string, int, int>{"prefill", f->prefill_workers, prefill_threads},
                                               {"decode", f->decode_workers, decode_threads}}) {
        std::vector<std::string> args = worker_args;
        args.insert(args.end(), {"--role", role});
        launch(n, n_threads, std::move(args));
      }
    } else {
      launch(f->workers, threads, worker_args);
    }
    auto gave_up = [&] {
      return std::any_of(launchers.begin(), launchers.end(), [](const auto& l) { return l->gave_up(); });
    };
    WaitForStop(signals, coordinator, gave_up, true);
    const bool failed = gave_up();
    coordinator.state().ShutdownWorkers("the cluster is shutting down");
    for (auto& l : launchers) l->Stop(10);
    coordinator.Shutdown();
    cleanup();
    if (failed) return Fail("the workers could not be kept running");
    std::fprintf(stderr, "daedalus serve: stopped\n");
    return 0;
  };
}

}  // namespace daedalus
