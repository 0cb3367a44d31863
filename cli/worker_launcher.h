// `serve`'s launcher: runs `mpirun -np N <this executable> worker ...` as a child and starts
// it again when it exits unexpectedly (a worker died and mpirun ended the job), so the cluster
// re-forms without a coordinator restart.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace daedalus {

class WorkerLauncher {
 public:
  // `worker_args`: the arguments after `worker`. At most `max_restarts` restarts.
  WorkerLauncher(int n_workers, int threads_per_worker, std::vector<std::string> worker_args, int max_restarts);
  ~WorkerLauncher();

  void Start();
  // Waits up to `grace_s` for the job to end by itself (the coordinator told the workers to
  // stop), then terminates it.
  void Stop(double grace_s);
  // The process id of the running mpirun (0 when none); for tests and logs.
  pid_t pid() const;
  bool gave_up() const { return gave_up_; }

 private:
  pid_t Spawn();
  void Supervise();

  const int n_workers_, threads_per_worker_, max_restarts_;
  const std::vector<std::string> worker_args_;
  mutable std::mutex mu_;
  pid_t pid_ = 0;
  std::atomic<bool> stopping_{false}, gave_up_{false};
  std::thread supervisor_;
};

}  // namespace daedalus
