// `daedalus worker`: one rank of a cluster, started by mpirun/srun (or alone, as a world of
// one). Registers with the coordinator, loads the dense weights and the experts placed on it,
// then serves until told to stop.
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "core/status.h"
#include "routing/fault_injection.h"
#include "routing/mpi_transport.h"
#include "worker/control_client.h"
#include "worker/serve_loop.h"
#include "worker/weights.h"

namespace daedalus {

namespace {

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
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      if (out.replicas[e].empty()) return absl::FailedPreconditionError(absl::StrCat("layer ", l, ": expert ", e, " is placed nowhere"));
    }
  }
  return placements;
}

bool SamePlacement(const std::vector<Placement>& a, const std::vector<Placement>& b) {
  if (a.size() != b.size()) return false;
  for (size_t l = 0; l < a.size(); ++l) {
    if (a[l].experts_on != b[l].experts_on) return false;
  }
  return true;
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

}  // namespace

Command AddWorkerCommand(CLI::App& app) {
  struct Flags {
    std::string model, coordinator, cluster_secret, tls_ca, tls_server_name, device = "cpu";
    double register_timeout_s = 600, reconnect_timeout_s = 600, collective_timeout_s = 60;
    EngineFlags engine;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--coordinator", f->coordinator, "the coordinator's host:port")->required();
  app.add_option("--model", f->model, "checkpoint directory (Hugging Face layout), the coordinator's model")->required();
  app.add_option("--cluster-secret", f->cluster_secret, "the secret the coordinator expects from workers")
      ->envname("DAEDALUS_CLUSTER_SECRET");
  app.add_option("--tls-ca", f->tls_ca, "PEM of the CA that signed the coordinator's certificate (TLS)");
  app.add_option("--tls-server-name", f->tls_server_name, "name to verify in the coordinator's certificate");
  app.add_option("--device", f->device, "cpu");
  app.add_option("--register-timeout", f->register_timeout_s,
                 "seconds to wait for the coordinator and the other ranks to register");
  app.add_option("--reconnect-timeout", f->reconnect_timeout_s,
                 "seconds to wait for the coordinator (restarted, or reachable again) and the other ranks to "
                 "register again after the control stream ended");
  app.add_option("--collective-timeout", f->collective_timeout_s,
                 "seconds a rank waits in a collective before it reports the missing peers and exits");
  f->engine.Register(app);
  return [f]() {
    if (f->device != "cpu") return Fail(absl::StrCat("--device ", f->device, ": this worker runs on the CPU (--device cpu)"));
    SetThreads(f->engine.threads);
    std::unique_ptr<Transport> transport;
    if (LaunchedByMpi()) {
      if (absl::Status s = InitMpi(nullptr, nullptr); !s.ok()) return Fail(std::string(s.message()));
      auto made = MakeMpiTransport();
      if (!made.ok()) return Fail(std::string(made.status().message()));
      transport = std::move(*made);
      if (const char* stall = std::getenv("DAEDALUS_FAULT_STALL")) {  // fault injection for the tests
        auto stalled = MaybeStall(std::move(transport), stall);
        if (!stalled.ok()) return Fail(std::string(stalled.status().message()));
        transport = std::move(*stalled);
      }
    }
    const int rank = transport ? transport->rank() : 0, world = transport ? transport->world_size() : 1;
    auto fail = [&](const absl::Status& s) {
      std::fprintf(stderr, "daedalus worker rank %d of %d: error: %s\n", rank, world, std::string(s.message()).c_str());
      std::fflush(stderr);
      if (transport) AbortMpi(1);  // the other ranks cannot go on without this one
      return 1;
    };
    auto run = [&]() -> absl::Status {
      const auto long_wait = std::chrono::milliseconds(static_cast<int64_t>(f->register_timeout_s * 1000));
      const auto reconnect_wait = std::chrono::milliseconds(static_cast<int64_t>(f->reconnect_timeout_s * 1000));
      ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::Load(f->model + "/config.json"));
      EngineOptions options = f->engine.Options();
      options.keep_results = false;
      v1::RegisterRequest reg;
      reg.set_rank(rank);
      reg.set_world_size(world);
      char host[256] = {};
      gethostname(host, sizeof host - 1);
      reg.set_host(host);
      reg.set_pid(getpid());
      reg.set_device(f->device);
      const int64_t pages = (options.kv.max_tokens + options.kv.page_size - 1) / options.kv.page_size;
      reg.set_kv_capacity_tokens(pages * options.kv.page_size);
      reg.set_kv_page_size(options.kv.page_size);
      reg.set_transport(transport ? "mpi" : "none");
      const bool drop_on_signal = std::getenv("DAEDALUS_FAULT_DROP_ON_SIGUSR1") != nullptr;
      if (drop_on_signal) std::signal(SIGUSR1, RequestDrop);
      std::vector<Placement> placements;
      std::unique_ptr<ModelWeights> weights;
      // One formation per pass: register (a new launch id each time), load what the placement
      // asks for, serve; when the control stream ends, every rank comes back here together.
      for (int formation = 0;; ++formation) {
        if (transport) transport->set_deadline(formation == 0 ? long_wait : reconnect_wait);
        ASSIGN_OR_RETURN(std::string launch_id, LaunchId(transport.get()));
        reg.set_launch_id(launch_id);
        ASSIGN_OR_RETURN(auto control, ControlClient::Connect({f->coordinator, f->tls_ca, f->tls_server_name}, f->cluster_secret));
        ASSIGN_OR_RETURN(v1::Assignment assignment, control->Register(reg, formation == 0 ? long_wait : reconnect_wait));
        ASSIGN_OR_RETURN(std::vector<Placement> placed, FromAssignment(assignment.placement(), config, world));
        // Every rank got the same assignment, so all reload or none does.
        if (weights == nullptr || !SamePlacement(placed, placements)) {
          weights.reset();
          placements = std::move(placed);
          ExpertFilter mine = [&](int64_t layer, int64_t expert) { return placements[layer].Holds(rank, static_cast<int32_t>(expert)); };
          ASSIGN_OR_RETURN(weights, LoadModelWeights(f->model, mine));
        }
        if (transport) {
          options.transport = transport.get();
          options.placements = &placements;
        }
        Engine engine(*weights, options);  // a fresh one per formation: earlier sequences are abandoned
        if (transport) {
          RETURN_IF_ERROR(transport->Barrier("waiting for every rank to load its weights"));
          transport->set_deadline(std::chrono::milliseconds(static_cast<int64_t>(f->collective_timeout_s * 1000)));
        }
        RETURN_IF_ERROR(control->Open(rank, assignment.generation()));
        ServeLoopOptions loop;
        loop.heartbeat_interval = std::chrono::milliseconds(std::max(50, assignment.heartbeat_interval_ms()));
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
    FinalizeMpi();
    return 0;
  };
}

}  // namespace daedalus
