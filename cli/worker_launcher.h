// `serve`'s launcher, in one of two ways:
//  - mpi: runs `mpirun -np N <this executable> worker ...` as a child and starts the whole job
//    again when it exits unexpectedly (a worker died and mpirun ended the job: the MPI world is
//    fixed), so the cluster re-forms without a coordinator restart;
//  - one process per worker (the ucx data plane): each worker is a child of its own and only a
//    dead one is started again, `relaunch_delay` later; it joins the running cluster.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace daedalus {

struct WorkerLaunchOptions {
  int n_workers = 1;
  int threads_per_worker = 1;
  std::vector<std::string> worker_args;  // the arguments after `worker`
  int max_restarts = 10;                 // mpi: of the job; one process each: of any worker, in all
  bool one_process_each = false;
  std::chrono::milliseconds relaunch_delay{500};
  // mpi: other jobs share this machine's cores (prefill and decode groups), so mpirun binds no
  // rank to a core (each job would bind its rank 0 to the same one).
  bool shared_cores = false;
};

class WorkerLauncher {
 public:
  explicit WorkerLauncher(WorkerLaunchOptions options);
  ~WorkerLauncher();

  void Start();
  // Waits up to `grace_s` for the workers to end by themselves (the coordinator told them to
  // stop), then terminates them.
  void Stop(double grace_s);
  // The process ids running now (mpirun's, or each worker's; 0 for one not running), for tests
  // and logs.
  std::vector<pid_t> pids() const;
  bool gave_up() const { return gave_up_; }

 private:
  pid_t Spawn();
  void Supervise();

  const WorkerLaunchOptions options_;
  mutable std::mutex mu_;
  std::vector<pid_t> pids_;  // process groups
  std::atomic<bool> stopping_{false}, gave_up_{false};
  std::thread supervisor_;
};

}  // namespace daedalus
