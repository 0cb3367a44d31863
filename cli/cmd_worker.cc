// `daedalus worker`: one rank of a cluster, started by mpirun/srun (or alone, as a world of
// one). Registers with the coordinator, loads the dense weights and the experts placed on it,
// then serves until told to stop.
#include <chrono>

#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "worker/worker_process.h"

namespace daedalus {

Command AddWorkerCommand(CLI::App& app) {
  struct Flags {
    std::string model, coordinator, cluster_secret, tls_ca, tls_server_name, transport, launch_id, role = "mixed";
    double register_timeout_s = 600, reconnect_timeout_s = 600, collective_timeout_s = 60, kv_transfer_timeout_s = 10;
    int rank = -2, world_size = -1;
    EngineFlags engine;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--coordinator", f->coordinator, "the coordinator's host:port")->required();
  app.add_option("--model", f->model, "checkpoint directory (Hugging Face layout), the coordinator's model")->required();
  app.add_option("--cluster-secret", f->cluster_secret, "the secret the coordinator expects from workers")
      ->envname("DAEDALUS_CLUSTER_SECRET");
  app.add_option("--tls-ca", f->tls_ca, "PEM of the CA that signed the coordinator's certificate (TLS)");
  app.add_option("--tls-server-name", f->tls_server_name, "name to verify in the coordinator's certificate");
  app.add_option("--transport", f->transport,
                 "data plane between workers: mpi (default under mpirun/srun with MPI), ucx (any launcher; addresses "
                 "exchanged through the coordinator) or nccl (GPU workers, --device cuda; the NCCL id handed out by "
                 "the coordinator)")
      ->check(CLI::IsMember({"mpi", "ucx", "nccl"}));
  app.add_option("--rank", f->rank, "with ucx or nccl: this worker's rank (default: the launcher's, else assigned)");
  app.add_option("--world-size", f->world_size, "with ucx or nccl: the number of workers (default: the coordinator's)");
  app.add_option("--launch-id", f->launch_id,
                 "with ucx or nccl: the same for every worker of one launch (default: the Slurm job step, else "
                 "join the launch that is forming)");
  app.add_option("--register-timeout", f->register_timeout_s,
                 "seconds to wait for the coordinator and the other ranks to register");
  app.add_option("--reconnect-timeout", f->reconnect_timeout_s,
                 "seconds to wait for the coordinator (restarted, or reachable again) and the other ranks to "
                 "register again after the control stream ended");
  app.add_option("--collective-timeout", f->collective_timeout_s,
                 "seconds a rank waits in a collective before it reports the missing peers and exits (ucx: it "
                 "reports them to the coordinator and serves on once the cluster re-forms without them)");
  app.add_option("--role", f->role,
                 "mixed (prefill and decode here), or with a coordinator run with --prefill-world-size and "
                 "--decode-world-size: prefill (prompts and their first token; the pages then go to a decode worker) "
                 "or decode (continues those sequences, reading their latent pages over UCX)")
      ->check(CLI::IsMember({"mixed", "prefill", "decode"}));
  app.add_option("--kv-transfer-timeout", f->kv_transfer_timeout_s,
                 "decode workers: seconds a read of a sequence's pages may take before the sequence is computed again here");
  f->engine.Register(app);
  return [f]() {
    if (auto d = ParseDevice(f->engine.device); !d.ok()) return Fail(std::string(d.status().message()));
    SetThreads(f->engine.threads);
    auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
    WorkerProcessOptions o;
    o.model = f->model, o.coordinator = f->coordinator, o.cluster_secret = f->cluster_secret;
    o.tls_ca = f->tls_ca, o.tls_server_name = f->tls_server_name;
    o.transport = f->transport, o.rank = f->rank, o.world_size = f->world_size, o.launch_id = f->launch_id;
    o.register_timeout = ms(f->register_timeout_s), o.reconnect_timeout = ms(f->reconnect_timeout_s);
    o.collective_timeout = ms(f->collective_timeout_s);
    o.device = f->engine.Device();
    o.kv_dtype = f->engine.kv_dtype;
    o.role = f->role;
    o.kv_transfer_timeout = ms(f->kv_transfer_timeout_s);
    o.engine_options = [engine = f->engine](const ModelConfig& config) { return engine.Options(config); };
    return RunWorkerProcess(std::move(o));
  };
}

}  // namespace daedalus
