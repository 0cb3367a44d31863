#include "worker/worker_process.h"

#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/host_memory.h"
#include "core/status.h"
#include "kernels/cpu_isa.h"
#include "routing/fault_injection.h"
#include "routing/kv_transfer.h"
#include "routing/mpi_transport.h"
#include "routing/ucx_transport.h"
#if DAEDALUS_HAVE_NCCL
#include "routing/nccl_transport.h"
#endif
#include "worker/control_client.h"
#include "worker/kv_cache.h"
#include "worker/serve_loop.h"
#include "worker/weights.h"

namespace daedalus {

namespace {

// The calling thread runs at the lowest CPU priority (nice 19: on a busy core it gets about 1.5% of
// the time a step's thread gets, and all the time the steps leave idle) and runs its OpenMP
// regions on itself alone: background work such as reading experts for a coming placement
// then barely slows the steps, yet ends.
void RunInBackground() {
  (void)setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 19);
  omp_set_num_threads(1);
}

// The same id on every rank of one launch: rank 0 draws it and sends it to the others.
absl::StatusOr<std::string> LaunchId(Transport* transport) {
  std::string id;
  if (transport == nullptr || transport->rank() == 0) {
    std::random_device rd;
    id = absl::StrCat(absl::Hex(static_cast<uint64_t>(rd()) << 32 | rd(), absl::kZeroPad16));
  }
  if (transport == nullptr) return id;
  std::vector<size_t> send_bytes(transport->world_size(), transport->rank() == 0 ? id.size() : 0);
  std::string send;
  for (int r = 0; r < transport->world_size(); ++r) send += id;
  std::vector<uint8_t> recv;
  std::vector<size_t> recv_bytes;
  RETURN_IF_ERROR(transport->AllToAllV(send.data(), send_bytes, recv, recv_bytes, "sharing the launch id"));
  return std::string(recv.begin(), recv.end());
}

// The coordinator's placement, checked against the model.
absl::StatusOr<std::vector<Placement>> FromAssignment(const v1::Placement& p, const ModelConfig& c, int world_size) {
  if (p.layers_size() != c.num_hidden_layers) {
    return absl::FailedPreconditionError(absl::StrCat("the coordinator placed ", p.layers_size(), " layers; the model has ",
                                                      c.num_hidden_layers, " (is it serving another model?)"));
  }
  std::vector<Placement> placements(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    Placement& out = placements[l];
    out.world_size = world_size;
    out.replicas.assign(c.n_routed_experts, {});
    out.experts_on.assign(world_size, {});
    if (!c.is_moe_layer(l)) continue;
    const auto& layer = p.layers(l);
    if (layer.experts_on_size() != world_size) {
      return absl::FailedPreconditionError(absl::StrCat("layer ", l, ": the placement has ", layer.experts_on_size(), " ranks, not ", world_size));
    }
    for (int r = 0; r < world_size; ++r) {
      for (int32_t e : layer.experts_on(r).experts()) {
        if (e < 0 || e >= c.n_routed_experts) return absl::FailedPreconditionError(absl::StrCat("layer ", l, ": expert ", e, " out of range"));
        out.experts_on[r].push_back(e);
        out.replicas[e].push_back(r);
      }
    }
    for (int r = 0; r < world_size; ++r) {  // Placement::Holds searches a rank's list: sorted, once each
      std::vector<int32_t>& held = out.experts_on[r];
      std::sort(held.begin(), held.end());
      if (const auto twice = std::adjacent_find(held.begin(), held.end()); twice != held.end()) {
        return absl::FailedPreconditionError(absl::StrCat("layer ", l, ": expert ", *twice, " placed twice on rank ", r));
      }
    }
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      if (out.replicas[e].empty()) return absl::FailedPreconditionError(absl::StrCat("layer ", l, ": expert ", e, " is placed nowhere"));
    }
  }
  return placements;
}

// The routed experts `placement` puts on `rank` (it keeps its own copy: readers may outlive the caller's).
ExpertFilter HeldBy(std::vector<Placement> placement, int rank) {
  return [placement = std::move(placement), rank](int64_t layer, int64_t expert) {
    return placement[layer].Holds(rank, static_cast<int32_t>(expert));
  };
}

// The launcher's rank and world size from its environment (Slurm's srun, OpenMPI's mpirun),
// for workers that do not use MPI for their data plane: -1 and 0 when there is none.
void LauncherRank(int& rank, int& world) {
  for (auto [r, w] : {std::pair{"SLURM_PROCID", "SLURM_NTASKS"}, std::pair{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                      std::pair{"PMIX_RANK", "PMIX_SIZE"}}) {
    const char* rv = std::getenv(r);
    const char* wv = std::getenv(w);
    if (rv != nullptr && wv != nullptr) {
      rank = std::atoi(rv);
      world = std::atoi(wv);
      return;
    }
  }
}

// Fault injection for the tests: with DAEDALUS_FAULT_DROP_ON_SIGUSR1=1, SIGUSR1 makes the
// worker cut its control stream as a broken connection would, the process running on.
std::atomic<bool> drop_requested{false};

void RequestDrop(int) { drop_requested = true; }

// Watches for the signal while `control` serves; stops watching when destroyed.
class DropOnSignal {
 public:
  DropOnSignal(bool enabled, ControlClient& control) {
    if (!enabled) return;
    thread_ = std::thread([this, &control] {
      std::unique_lock<std::mutex> lock(mu_);
      while (!cv_.wait_for(lock, std::chrono::milliseconds(10), [&] { return done_; })) {
        if (!drop_requested.exchange(false)) continue;
        const double at = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
        std::fprintf(stderr, "daedalus worker: fault injection: dropping the control stream at %.3f\n", at);
        std::fflush(stderr);
        control.Drop();
      }
    });
  }
  ~DropOnSignal() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// Before the rank is known: the error as every command prints one.
int Failed(const std::string& message) {
  std::fprintf(stderr, "daedalus: error: %s\n", message.c_str());
  return 1;
}

}  // namespace

int RunWorkerProcess(WorkerProcessOptions o) {
  const std::string transport_kind = !o.transport.empty() ? o.transport : LaunchedByMpi() ? "mpi" : "none";
  std::unique_ptr<Transport> transport;
  UcxTransport* ucx = nullptr;
  std::string nccl_id;  // with --transport nccl: this worker's candidate communicator id
  int rank = 0, world = 1;
  if (transport_kind == "mpi") {
    if (!LaunchedByMpi()) return Failed("--transport mpi needs an MPI launcher (mpirun, or srun --mpi=pmix)");
    if (absl::Status s = InitMpi(nullptr, nullptr); !s.ok()) return Failed(std::string(s.message()));
    // Prefill and decode workers started by one mpirun (MPMD) form a world per role.
    auto made = MakeMpiTransport(kMpiMaxMessageBytes, o.role == "prefill" ? 1 : o.role == "decode" ? 2 : 0);
    if (!made.ok()) return Failed(std::string(made.status().message()));
    transport = std::move(*made);
    rank = transport->rank();
    world = transport->world_size();
  } else if (transport_kind == "ucx" || transport_kind == "nccl") {
    if (transport_kind == "ucx") {
      auto made = CreateUcxTransport();
      if (!made.ok()) return Failed(std::string(made.status().message()));
      ucx = made->get();
      transport = std::move(*made);
    } else {
#if DAEDALUS_HAVE_NCCL
      // Every worker draws an id; all of them join rank 0's (the assignment hands it out).
      auto id = NewNcclUniqueId();
      if (!id.ok()) return Failed(std::string(id.status().message()));
      nccl_id = *id;
#else
      return Failed("--transport nccl: this build has no NCCL (built without CUDA)");
#endif
    }
    rank = -1;
    world = 0;
    // The launcher numbers every process of its job; a role's group is numbered by the coordinator.
    if (o.role == "mixed") LauncherRank(rank, world);
    if (o.rank != -2) rank = o.rank;
    if (o.world_size != -1) world = o.world_size;
    if (o.launch_id.empty()) {
      const char* job = std::getenv("SLURM_JOB_ID");
      const char* step = std::getenv("SLURM_STEP_ID");
      if (job != nullptr) o.launch_id = absl::StrCat("slurm-", job, ".", step != nullptr ? step : "0");
    }
  }
  const bool mpi = transport_kind == "mpi";
  if (const char* stall = std::getenv("DAEDALUS_FAULT_STALL"); stall != nullptr && transport) {  // for the tests
    auto stalled = MaybeStall(std::move(transport), stall);
    if (!stalled.ok()) return Failed(std::string(stalled.status().message()));
    transport = std::move(*stalled);
  }
  if (const char* ms = std::getenv("DAEDALUS_FAULT_STALL_ON_SIGUSR2"); ms != nullptr && transport) {
    auto stalled = MaybeStallOnSignal(std::move(transport), ms);
    if (!stalled.ok()) return Failed(std::string(stalled.status().message()));
    transport = std::move(*stalled);
  }
  auto fail = [&](const absl::Status& s) {
    std::fprintf(stderr, "daedalus worker rank %d of %d: error: %s\n", rank, world, std::string(s.message()).c_str());
    std::fflush(stderr);
    if (mpi) AbortMpi(1);  // the other ranks cannot go on without this one
    return 1;
  };
  auto run = [&]() -> absl::Status {
    const auto long_wait = o.register_timeout, reconnect_wait = o.reconnect_timeout;
    ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::Load(o.model + "/config.json"));
    EngineOptions options = o.engine_options(config);
    options.keep_results = false;
    options.kv.log_names = true;  // reported for prefix-aware routing
    // A CPU worker's pool that cannot fit is refused before it registers (and checked again once
    // the weights are in memory); a GPU's pool is sized from device memory.
    // Before it registers no worker of the cluster has committed a pool: each checks its share
    // of the node's memory.
    if (*ParseDevice(o.device.device) < 0) {
      RETURN_IF_ERROR(PagedKvCache::CheckFits(config, options.kv, LocalProcessCount()));
    }
    v1::RegisterRequest reg;
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    reg.set_host(host);
    reg.set_pid(getpid());
    reg.set_device(o.device.device);
    const int64_t pages = (options.kv.max_tokens + options.kv.page_size - 1) / options.kv.page_size;
    reg.set_kv_capacity_tokens(pages * options.kv.page_size);
    reg.set_kv_page_size(options.kv.page_size);
    reg.set_kv_dtype(o.kv_dtype);
    reg.set_prefix_caching(options.kv.prefix_caching && *ParseDevice(o.device.device) < 0);  // CPU pools only
    reg.set_transport(transport_kind);
    reg.set_role(o.role);
    // Prefill and decode workers own their KV pool, registered once for reading by others.
    std::unique_ptr<uint8_t[]> pool;
    std::unique_ptr<KvTransfer> kv_transfer;
    if (o.role != "mixed") {
      if (*ParseDevice(o.device.device) >= 0) {
        return absl::UnimplementedError(absl::StrCat("--role ", o.role, ": GPU workers take no prefill or decode role yet (their KV pool is in device memory)"));
      }
      const size_t bytes = PagedKvCache::PoolBytes(config, options.kv);  // checked to fit above
      pool.reset(new uint8_t[bytes]);
      PagedKvCache::Commit(pool.get(), bytes);
      ASSIGN_OR_RETURN(kv_transfer, CreateUcxKvTransfer(pool.get(), bytes, o.kv_transfer_timeout));
      if (const char* ms = std::getenv("DAEDALUS_FAULT_KV_READ_DELAY_MS")) {  // for the tests
        kv_transfer = DelayedKvReads(std::move(kv_transfer), std::chrono::milliseconds(std::atoi(ms)));
      }
      options.kv.pool = pool.get();
      reg.set_kv_transfer_address(kv_transfer->address());
      reg.set_kv_pool_key(kv_transfer->pool_key());
    }
    if (ucx != nullptr) reg.set_data_plane_address(ucx->address());
    if (!nccl_id.empty()) reg.set_data_plane_address(nccl_id);
    const bool drop_on_signal = std::getenv("DAEDALUS_FAULT_DROP_ON_SIGUSR1") != nullptr;
    if (drop_on_signal) std::signal(SIGUSR1, RequestDrop);
    std::vector<Placement> placements;
    std::unique_ptr<ModelWeights> weights;
    // One formation per pass: register, load what the placement asks for, serve; when the
    // control stream ends, every rank comes back here together and registers again with the
    // same rank and world (a new launch id, agreed over the data plane).
    for (int formation = 0;; ++formation) {
      // Registering again: the data plane (ucx, nccl) is up and kept, and so are rank and world.
      const bool again = formation > 0;
      const auto wait = again ? reconnect_wait : long_wait;
      if (transport) transport->set_deadline(wait);
      std::string launch_id = o.launch_id;
      if (again || transport_kind == "mpi" || transport_kind == "none") {
        ASSIGN_OR_RETURN(launch_id, LaunchId(transport.get()));
      }
      reg.set_launch_id(launch_id);
      reg.set_rank(rank);
      reg.set_world_size(world);
      if (transport) reg.set_data_plane_epoch(transport->epoch());
      ASSIGN_OR_RETURN(auto control, ControlClient::Connect({o.coordinator, o.tls_ca, o.tls_server_name}, o.cluster_secret));
      ASSIGN_OR_RETURN(v1::Assignment assignment, control->Register(reg, wait));
      if (again && (assignment.rank() != rank || assignment.world_size() != world)) {
        return absl::FailedPreconditionError(absl::StrCat("registered again as rank ", assignment.rank(), " of ",
                                                          assignment.world_size(), ", not ", rank, " of ", world));
      }
      rank = assignment.rank();
      world = assignment.world_size();
      if (!again) {
        std::fprintf(stderr, "daedalus worker rank %d of %d%s: registered; CPU kernel tier %s, %d threads\n", rank, world,
                     o.role == "mixed" ? "" : absl::StrCat(" (", o.role, ")").c_str(), CpuIsaDescription(ActiveCpuIsa()).c_str(),
                     omp_get_max_threads());
      }
      if (ucx != nullptr) {
        const std::vector<std::string> addresses(assignment.data_plane_addresses().begin(),
                                                 assignment.data_plane_addresses().end());
        // Again: the same world on the same endpoints, numbered as the coordinator numbers it now.
        RETURN_IF_ERROR(again ? ucx->Reform(rank, addresses, assignment.generation())
                              : ucx->Connect(rank, addresses, assignment.generation()));
      }
#if DAEDALUS_HAVE_NCCL
      if (!again && !nccl_id.empty()) {
        ASSIGN_OR_RETURN(int device, ParseDevice(o.device.device));
        if (device < 0) return absl::InvalidArgumentError("--transport nccl needs a GPU: --device cuda[:N]");
        ASSIGN_OR_RETURN(transport, MakeNcclTransport(assignment.data_plane_addresses(0), rank, world, device, wait));
      }
#endif
      if (transport && transport->world_size() != world) {
        return absl::FailedPreconditionError(absl::StrCat("the launcher started ", transport->world_size(),
                                                          " workers; the coordinator serves ", world));
      }
      if (!transport && world != 1) {
        return absl::FailedPreconditionError(absl::StrCat("the coordinator serves ", world,
                                                          " workers: start them under mpirun/srun, or with --transport ucx"));
      }
      ASSIGN_OR_RETURN(std::vector<Placement> placed, FromAssignment(assignment.placement(), config, world));
      const ExpertFilter mine = HeldBy(placed, rank);
      if (weights == nullptr) {
        // A joiner loads while the cluster serves: in the background, so that the serving
        // ranks' steps keep their cores.
        const bool join = assignment.join();
        auto load = [&o, &mine, join] {
          if (join) RunInBackground();
          return LoadModelWeights(o.model, mine);
        };
        ASSIGN_OR_RETURN(weights, join ? std::async(std::launch::async, load).get() : load());
      } else {
        RETURN_IF_ERROR(LoadMissingExperts(*weights, mine));  // every rank got the same placement
      }
      placements = std::move(placed);
      if (transport) {
        options.transport = transport.get();
        options.placements = &placements;
      }
      // Fresh per formation, the backend before the engine that uses it: earlier sequences are
      // abandoned with their KV cache.
      ASSIGN_OR_RETURN(auto backend, MakeDeviceBackend(o.device, *weights, options));
      RETURN_IF_ERROR(PagedKvCache::CheckFits(weights->config, options.kv));
      Engine engine(*weights, options);
      if (transport) {
        if (!assignment.join()) RETURN_IF_ERROR(transport->Barrier("waiting for every rank to load its weights"));
        transport->set_deadline(o.collective_timeout);
      }
      if (ucx != nullptr) control->OnReform([ucx](int64_t generation) { ucx->Interrupt(generation); });
      RETURN_IF_ERROR(control->Open(rank, assignment.generation(), o.role));
      ServeLoopOptions loop;
      loop.kv_transfer = kv_transfer.get();
      loop.heartbeat_interval = std::chrono::milliseconds(std::max(50, assignment.heartbeat_interval_ms()));
      // Placement updates: the experts a new placement adds are read on a thread of their own
      // while steps go on; the switch installs them and frees the ones no longer placed here.
      // GPU workers are never sent one (the coordinator rebalances CPU clusters only).
      struct Pending {
        std::vector<Placement> next;
        std::future<absl::StatusOr<StagedExperts>> staged;
        std::chrono::steady_clock::time_point since;  // when the update came
      };
      std::optional<Pending> pending;
      loop.placement.prepare = [&](const v1::Placement& update) -> absl::Status {
        if (backend) return absl::UnimplementedError("expert placement updates are not supported on GPU workers yet");
        ASSIGN_OR_RETURN(std::vector<Placement> next, FromAssignment(update, config, world));
        ExpertFilter mine = HeldBy(next, rank);
        pending = Pending{std::move(next), std::async(std::launch::async, [&weights, mine] {
                            RunInBackground();
                            return ReadMissingExperts(*weights, mine);
                          }),
                          std::chrono::steady_clock::now()};
        return absl::OkStatus();
      };
      loop.placement.prepared = [&]() -> absl::StatusOr<bool> {
        return pending && pending->staged.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
      };
      // Installs the experts read for `next` (freeing those it does not place here) and switches
      // to it; returns how many experts this rank then holds.
      auto switch_to = [&](const std::vector<Placement>& next, StagedExperts staged) {
        InstallExperts(*weights, std::move(staged), HeldBy(next, rank));
        // The exchanges read `placements` by reference: assigning in place switches them.
        size_t held = 0;
        for (size_t l = 0; l < placements.size(); ++l) {
          placements[l] = next[l];
          if (rank < static_cast<int>(next[l].experts_on.size())) held += next[l].experts_on[rank].size();
        }
        return held;
      };
      loop.placement.apply = [&]() -> absl::Status {
        if (!pending) return absl::InternalError("no prepared placement to apply");
        ASSIGN_OR_RETURN(StagedExperts staged, pending->staged.get());
        const size_t read = staged.experts.size();
        const size_t held = switch_to(pending->next, std::move(staged));
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - pending->since).count();
        std::fprintf(stderr,
                     "daedalus worker rank %d: switched to a new expert placement: %zu experts read, %zu held, %.2f s "
                     "after it came (read in the background while steps went on)\n",
                     rank, read, held, seconds);
        std::fflush(stderr);
        pending.reset();
        return absl::OkStatus();
      };
      // Elastic (ucx): the world re-forms around a lost or joining worker while this one serves.
      if (ucx != nullptr) loop.reform = [&](const v1::Reform& r) -> absl::Status {
        if (backend) return absl::UnimplementedError("GPU workers do not re-form a running cluster yet");
        if (pending) {  // a placement of the old world: read, then dropped
          pending->staged.wait();
          pending.reset();
        }
        ASSIGN_OR_RETURN(std::vector<Placement> next, FromAssignment(r.placement(), config, r.world_size()));
        RETURN_IF_ERROR(ucx->Reform(r.rank(), {r.data_plane_addresses().begin(), r.data_plane_addresses().end()},
                                    r.generation()));
        const int was = rank;
        rank = r.rank();
        world = r.world_size();
        ASSIGN_OR_RETURN(StagedExperts staged, ReadMissingExperts(*weights, HeldBy(next, rank)));
        std::fprintf(stderr, "daedalus worker rank %d: re-formed as rank %d of %d (generation %lld: %s)%s\n", was, rank, world,
                     static_cast<long long>(r.generation()), r.reason().c_str(),
                     staged.experts.empty() ? ""
                                            : absl::StrCat("; read ", staged.experts.size(),
                                                           " experts it now serves from the checkpoint").c_str());
        std::fflush(stderr);
        switch_to(next, std::move(staged));
        return absl::OkStatus();
      };
      DropOnSignal dropper(drop_on_signal, *control);
      ASSIGN_OR_RETURN(ServeEnd end, ServeLoop(engine, transport.get(), *control, loop));
      if (end == ServeEnd::kShutdown) return absl::OkStatus();
      std::fprintf(stderr, "daedalus worker rank %d of %d: %s; registering again\n", rank, world,
                   control->closed() ? control->close_reason().c_str() : "the coordinator asked the cluster to re-form");
      std::fflush(stderr);
    }
  };
  if (absl::Status s = run(); !s.ok()) return fail(s);
  transport.reset();
  if (mpi) FinalizeMpi();
  return 0;
}

}  // namespace daedalus
