// `daedalus worker`: one rank of a cluster, started by mpirun/srun (or alone, as a world of
// one). Registers with the coordinator, loads the dense weights and the experts placed on it,
// then serves until told to stop.
#include <unistd.h>

#include <cstdio>
#include <random>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "core/status.h"
#include "routing/fault_injection.h"
#include "routing/mpi_transport.h"
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

}  // namespace

Command AddWorkerCommand(CLI::App& app) {
  struct Flags {
    std::string model, coordinator, cluster_secret, tls_ca, tls_server_name;
    double register_timeout_s = 600, collective_timeout_s = 60;
    EngineFlags engine;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--coordinator", f->coordinator, "the coordinator's host:port")->required();
  app.add_option("--model", f->model, "checkpoint directory (Hugging Face layout), the coordinator's model")->required();
  app.add_option("--cluster-secret", f->cluster_secret, "the secret the coordinator expects from workers")
      ->envname("DAEDALUS_CLUSTER_SECRET");
  app.add_option("--tls-ca", f->tls_ca, "PEM of the CA that signed the coordinator's certificate (TLS)");
  app.add_option("--tls-server-name", f->tls_server_name, "name to verify in the coordinator's certificate");
  app.add_option("--register-timeout", f->register_timeout_s,
                 "seconds to wait for the coordinator and the other ranks to register");
  app.add_option("--collective-timeout", f->collective_timeout_s,
                 "seconds a rank waits in a collective before it reports the missing peers and exits");
  f->engine.Register(app);
  return [f]() {
    if (auto d = ParseDevice(f->engine.device); !d.ok()) return Fail(std::string(d.status().message()));
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
      if (transport) transport->set_deadline(long_wait);
      ASSIGN_OR_RETURN(std::string launch_id, LaunchId(transport.get()));
      ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::Load(f->model + "/config.json"));
      EngineOptions options = f->engine.Options();
      options.keep_results = false;
      ASSIGN_OR_RETURN(auto control, ControlClient::Connect({f->coordinator, f->tls_ca, f->tls_server_name}, f->cluster_secret));
      v1::RegisterRequest reg;
      reg.set_rank(rank);
      reg.set_world_size(world);
      char host[256] = {};
      gethostname(host, sizeof host - 1);
      reg.set_host(host);
      reg.set_pid(getpid());
      reg.set_device(f->engine.device);
      reg.set_launch_id(launch_id);
      const int64_t pages = (options.kv.max_tokens + options.kv.page_size - 1) / options.kv.page_size;
      reg.set_kv_capacity_tokens(pages * options.kv.page_size);
      reg.set_kv_page_size(options.kv.page_size);
      reg.set_transport(transport ? "mpi" : "none");
      ASSIGN_OR_RETURN(v1::Assignment assignment, control->Register(reg, long_wait));
      ASSIGN_OR_RETURN(std::vector<Placement> placements, FromAssignment(assignment.placement(), config, world));
      ExpertFilter mine = [&](int64_t layer, int64_t expert) { return placements[layer].Holds(rank, static_cast<int32_t>(expert)); };
      ASSIGN_OR_RETURN(auto weights, LoadModelWeights(f->model, mine));
      if (transport) {
        options.transport = transport.get();
        options.placements = &placements;
      }
      ASSIGN_OR_RETURN(auto backend, MakeDeviceBackend(f->engine.Device(), *weights, options));
      Engine engine(*weights, options);
      if (transport) {
        RETURN_IF_ERROR(transport->Barrier("waiting for every rank to load its weights"));
        transport->set_deadline(std::chrono::milliseconds(static_cast<int64_t>(f->collective_timeout_s * 1000)));
      }
      RETURN_IF_ERROR(control->Open(rank, assignment.generation()));
      ServeLoopOptions loop;
      loop.heartbeat_interval = std::chrono::milliseconds(std::max(50, assignment.heartbeat_interval_ms()));
      return ServeLoop(engine, transport.get(), *control, loop);
    };
    if (absl::Status s = run(); !s.ok()) return fail(s);
    transport.reset();
    FinalizeMpi();
    return 0;
  };
}

}  // namespace daedalus
