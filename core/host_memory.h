// How much memory this process can still commit, for sizing what it commits up front (the KV
// cache pool, worker/kv_cache.h).
#pragma once

#include <cstdint>

namespace daedalus {

// /proc/meminfo's MemAvailable, lowered to the room that the process's memory cgroup (v2, or v1's
// memory controller) and each cgroup above it leave under their limit, where one is set (a Slurm
// job's --mem, a container's limit), their file cache but its shared memory counted as room. -1
// where neither can be read.
int64_t AvailableHostBytes();

// The processes a launcher started on this node (mpirun's OMPI_COMM_WORLD_LOCAL_SIZE, srun's
// SLURM_NTASKS_PER_NODE, MPICH's MPI_LOCALNRANKS); 0 where none says.
int LocalProcessCount();

}  // namespace daedalus
