// One worker process of a cluster, from start to exit: the data plane (mpi, ucx, nccl or none),
// registration with the coordinator, loading the dense weights and the experts placed here, and
// serving; when the control stream ends, every rank registers again together (same rank and
// world, the data plane kept) and serves the new formation. `daedalus worker` parses its flags
// into WorkerProcessOptions and runs this.
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "core/model_config.h"
#include "worker/device_backend.h"
#include "worker/engine.h"

namespace daedalus {

struct WorkerProcessOptions {
  std::string model;  // checkpoint directory: the coordinator's model
  std::string coordinator, cluster_secret, tls_ca, tls_server_name;
  // "mpi", "ucx", "nccl", or empty: mpi under an MPI launcher, else none (a world of one).
  std::string transport;
  // ucx and nccl: this worker's rank and the world size (-2 and -1: the launcher's, else the
  // coordinator's), and the launch they belong to (empty: the Slurm job step, else the forming one).
  int rank = -2, world_size = -1;
  std::string launch_id;
  std::chrono::milliseconds register_timeout{600'000}, reconnect_timeout{600'000}, collective_timeout{60'000};
  DeviceOptions device;
  std::string kv_dtype = "bf16";  // as reported at registration
  // "mixed", or with prefill/decode disaggregation "prefill" (computes prompts and their first
  // token, then hands the pages to a decode worker) or "decode" (continues handed-off
  // sequences, reading their pages from the prefill worker's pool over UCX).
  std::string role = "mixed";
  std::chrono::milliseconds kv_transfer_timeout{10'000};  // a read of pages still unfinished fails
  // The engine's options for the checkpoint's config (the KV cache is sized from its shape).
  std::function<EngineOptions(const ModelConfig&)> engine_options;
};

// Runs the worker until the coordinator shuts the cluster down (0) or an error ends it (1, the
// error printed with the rank; under MPI every rank is aborted, as none can go on without it).
int RunWorkerProcess(WorkerProcessOptions options);

}  // namespace daedalus
