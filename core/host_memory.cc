#include "core/host_memory.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace daedalus {
namespace {

// The first number in `path` (a cgroup file holds one; "max" is none): -1 if none.
int64_t NumberIn(const std::string& path) {
  std::ifstream in(path);
  int64_t v = -1;
  return in >> v ? v : -1;
}

// MemAvailable in bytes, -1 if /proc/meminfo does not say.
int64_t MemAvailable() {
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string key;
    int64_t kib = 0;
    if (fields >> key >> kib && key == "MemAvailable:") return kib * 1024;
  }
  return -1;
}

// The value of `key` in a memory.stat file, -1 if it has none.
int64_t StatIn(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string name;
  for (int64_t v = 0; in >> name >> v;)
    if (name == key) return v;
  return -1;
}

// A limit at or above this is none: v1 writes "unlimited" as a number near 2^63.
constexpr int64_t kNoLimit = int64_t{1} << 62;

// The least room that `limit` leaves above `usage` in the cgroup at `path` under `root` and in
// each cgroup above it, counting its file cache (memory.stat's `file_key`) as room, since the
// kernel reclaims it before it refuses memory (a checkpoint just read sits there), all but its
// shared memory (`shmem_key`: tmpfs and /dev/shm, which it cannot reclaim without swap); -1
// where none sets a limit ("max" in v2; v1's unlimited).
int64_t RoomUnder(const std::string& root, std::string path, const char* limit, const char* usage,
                  const char* file_key, const char* shmem_key) {
  int64_t room = -1;
  for (;;) {
    const std::string dir = root + (path == "/" ? std::string() : path);
    const int64_t max = NumberIn(dir + "/" + limit), used = NumberIn(dir + "/" + usage);
    if (max >= 0 && max < kNoLimit && used >= 0) {
      const std::string stat = dir + "/memory.stat";
      const int64_t file = std::max<int64_t>(0, StatIn(stat, file_key)) - std::max<int64_t>(0, StatIn(stat, shmem_key));
      const int64_t here = std::max<int64_t>(0, max - used + std::max<int64_t>(0, file));
      room = room < 0 ? here : std::min(room, here);
    }
    if (path.empty() || path == "/") return room;
    const size_t slash = path.find_last_of('/');
    path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
  }
}

// The room this process's memory cgroup leaves: v2 (the "0::" line of /proc/self/cgroup), or v1's
// memory controller where a hybrid system mounts it apart.
int64_t CgroupRoom() {
  std::ifstream in("/proc/self/cgroup");
  int64_t room = -1;
  for (std::string line; std::getline(in, line);) {
    int64_t here = -1;
    if (line.rfind("0::", 0) == 0) {
      here = RoomUnder("/sys/fs/cgroup", line.substr(3), "memory.max", "memory.current", "file", "shmem");
    } else if (const size_t at = line.find(":memory:"); at != std::string::npos) {
      here = RoomUnder("/sys/fs/cgroup/memory", line.substr(at + 8), "memory.limit_in_bytes", "memory.usage_in_bytes",
                       "total_cache", "total_shmem");
    }
    if (here >= 0) room = room < 0 ? here : std::min(room, here);
  }
  return room;
}

}  // namespace

int LocalProcessCount() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "MPI_LOCALNRANKS"}) {
    if (const char* v = std::getenv(var); v != nullptr && std::atoi(v) > 0) return std::atoi(v);
  }
  return 0;
}

int64_t AvailableHostBytes() {
  const int64_t mem = MemAvailable(), room = CgroupRoom();
  if (mem < 0) return room;
  return room < 0 ? mem : std::min(mem, room);
}

}  // namespace daedalus
