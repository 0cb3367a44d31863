#include "cli/worker_launcher.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

extern char** environ;

namespace daedalus {

WorkerLauncher::WorkerLauncher(WorkerLaunchOptions options) : options_(std::move(options)) {}

WorkerLauncher::~WorkerLauncher() { Stop(0); }

void WorkerLauncher::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  pids_.assign(options_.one_process_each ? options_.n_workers : 1, 0);
  for (pid_t& pid : pids_) pid = Spawn();
  supervisor_ = std::thread([this] { Supervise(); });
}

pid_t WorkerLauncher::Spawn() {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string threads = std::to_string(options_.threads_per_worker);
  std::vector<std::string> args;
  if (!options_.one_process_each) {
    args = {"mpirun", "-np", std::to_string(options_.n_workers), "--oversubscribe", "-x", "OMP_NUM_THREADS=" + threads};
    if (geteuid() == 0) args.insert(args.begin() + 1, "--allow-run-as-root");
    if (options_.shared_cores) args.insert(args.begin() + 1, {"--bind-to", "none"});
  }
  args.push_back(self);
  args.push_back("worker");
  args.insert(args.end(), options_.worker_args.begin(), options_.worker_args.end());
  args.push_back("--threads");
  args.push_back(threads);
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
  const int rc = options_.one_process_each ? posix_spawn(&pid, self.c_str(), nullptr, &attr, argv.data(), environ)
                                           : posix_spawnp(&pid, "mpirun", nullptr, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    std::fprintf(stderr, "daedalus serve: cannot start %s\n",
                 options_.one_process_each ? "a worker process" : "mpirun (is openmpi-bin installed?)");
    return 0;
  }
  return pid;
}

void WorkerLauncher::Supervise() {
  int restarts = 0;
  while (!stopping_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (size_t i = 0; i < pids_.size() && !stopping_; ++i) {
      pid_t pid;
      {
        std::lock_guard<std::mutex> lock(mu_);
        pid = pids_[i];
      }
      int status = 0;
      if (pid == 0) {
        gave_up_ = true;
        return;
      }
      if (waitpid(pid, &status, WNOHANG) != pid || stopping_) continue;
      const char* what = options_.one_process_each ? "a worker" : "the workers";
      if (++restarts > options_.max_restarts) {
        std::fprintf(stderr, "daedalus serve: %s exited %d times; giving up\n", what, restarts);
        std::lock_guard<std::mutex> lock(mu_);
        pids_[i] = 0;
        gave_up_ = true;
        return;
      }
      std::fprintf(stderr, "daedalus serve: %s exited (%s %d); starting %s again in %.1f s\n", what,
                   WIFSIGNALED(status) ? "signal" : "status", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                   options_.one_process_each ? "it" : "them", options_.relaunch_delay.count() / 1000.0);
      std::fflush(stderr);
      const auto at = std::chrono::steady_clock::now() + options_.relaunch_delay;
      while (std::chrono::steady_clock::now() < at && !stopping_) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (stopping_) return;
      std::lock_guard<std::mutex> lock(mu_);
      pids_[i] = Spawn();
    }
  }
}

void WorkerLauncher::Stop(double grace_s) {
  if (stopping_.exchange(true)) {
    if (supervisor_.joinable()) supervisor_.join();
    return;
  }
  if (supervisor_.joinable()) supervisor_.join();
  const std::vector<pid_t> groups = pids();
  auto any_alive = [&] {
    bool alive = false;
    for (pid_t pid : groups) {
      if (pid <= 0) continue;
      waitpid(pid, nullptr, WNOHANG);  // reap the leader, so an exited one does not linger
      alive |= kill(-pid, 0) == 0;
    }
    return alive;
  };
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_s);
  while (std::chrono::steady_clock::now() < until && any_alive()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (any_alive()) {
    for (pid_t pid : groups) {
      if (pid <= 0) continue;
      kill(pid, SIGTERM);  // mpirun passes it on to the workers
      kill(-pid, SIGTERM);
    }
    for (int i = 0; i < 60 && any_alive(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (pid_t pid : groups)
      if (pid > 0) kill(-pid, SIGKILL);
  }
  for (pid_t pid : groups)
    if (pid > 0) waitpid(pid, nullptr, WNOHANG);
}

std::vector<pid_t> WorkerLauncher::pids() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pids_;
}

}  // namespace daedalus
