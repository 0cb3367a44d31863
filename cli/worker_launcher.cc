#include "cli/worker_launcher.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

extern char** environ;

namespace daedalus {

WorkerLauncher::WorkerLauncher(int n_workers, int threads_per_worker, std::vector<std::string> worker_args,
                               int max_restarts)
    : n_workers_(n_workers), threads_per_worker_(threads_per_worker), max_restarts_(max_restarts),
      worker_args_(std::move(worker_args)) {}

WorkerLauncher::~WorkerLauncher() { Stop(0); }

void WorkerLauncher::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  pid_ = Spawn();
  supervisor_ = std::thread([this] { Supervise(); });
}

pid_t WorkerLauncher::Spawn() {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<std::string> args = {"mpirun", "-np", std::to_string(n_workers_), "--oversubscribe",
                                   "-x", "OMP_NUM_THREADS=" + std::to_string(threads_per_worker_)};
  if (geteuid() == 0) args.insert(args.begin() + 1, "--allow-run-as-root");
  args.push_back(self);
  args.push_back("worker");
  args.insert(args.end(), worker_args_.begin(), worker_args_.end());
  args.push_back("--threads");
  args.push_back(std::to_string(threads_per_worker_));
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own process group, so that stopping it reaches every worker; default signal mask (the
  // server blocks SIGINT/SIGTERM for sigwait).
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, "mpirun", nullptr, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    std::fprintf(stderr, "daedalus serve: cannot start mpirun (is openmpi-bin installed?)\n");
    return 0;
  }
  return pid;
}

void WorkerLauncher::Supervise() {
  int restarts = 0;
  while (true) {
    pid_t pid;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pid = pid_;
    }
    if (pid == 0) {
      gave_up_ = true;
      return;
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (stopping_) return;
    if (++restarts > max_restarts_) {
      std::fprintf(stderr, "daedalus serve: the workers exited %d times; giving up\n", restarts);
      std::lock_guard<std::mutex> lock(mu_);
      pid_ = 0;
      gave_up_ = true;
      return;
    }
    std::fprintf(stderr, "daedalus serve: the workers exited (%s %d); starting them again\n",
                 WIFSIGNALED(status) ? "signal" : "status", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    if (stopping_) return;
    std::lock_guard<std::mutex> lock(mu_);
    pid_ = Spawn();
  }
}

void WorkerLauncher::Stop(double grace_s) {
  if (stopping_.exchange(true)) {
    if (supervisor_.joinable()) supervisor_.join();
    return;
  }
  pid_t pid;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pid = pid_;
  }
  if (pid > 0) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_s);
    // The supervisor reaps the child; poll whether the process group is gone.
    while (std::chrono::steady_clock::now() < until && kill(-pid, 0) == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (kill(-pid, 0) == 0) {
      kill(pid, SIGTERM);  // mpirun passes it on to the workers
      kill(-pid, SIGTERM);
      for (int i = 0; i < 60 && kill(-pid, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      kill(-pid, SIGKILL);
    }
  }
  if (supervisor_.joinable()) supervisor_.join();
}

pid_t WorkerLauncher::pid() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pid_;
}

}  // namespace daedalus
