#include "routing/nccl_transport.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "kernels/cuda/device.h"

namespace daedalus {
namespace {

using Clock = std::chrono::steady_clock;

absl::Status NcclError(ncclResult_t r, const std::string& what) {
  if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": NCCL ", ncclGetErrorString(r)));
}
absl::Status CudaError(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": CUDA ", cudaGetErrorString(e)));
}

std::string RankList(const std::set<int>& ranks) {
  if (ranks.empty()) return "no peer";
  return absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(ranks, ", "));
}

class NcclTransport final : public Transport {
 public:
  NcclTransport(ncclComm_t comm, cudaStream_t stream, int rank, int world, int device)
      : comm_(comm), stream_(stream), rank_(rank), world_(world), device_(device) {}
  ~NcclTransport() override {
    if (broken_.empty()) {
      (void)cudaStreamSynchronize(stream_);
      (void)ncclCommFinalize(comm_);
      ncclResult_t state = ncclInProgress;
      const auto until = Clock::now() + std::chrono::seconds(10);
      while (state == ncclInProgress && Clock::now() < until) (void)ncclCommGetAsyncError(comm_, &state);
      (void)ncclCommDestroy(comm_);
    }
    (void)cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }

  absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes, std::vector<uint8_t>& recv,
                         std::vector<size_t>& recv_bytes, const std::string& what) override {
    RETURN_IF_ERROR(Usable("AllToAllV", what));
    if (send_bytes.size() != static_cast<size_t>(world_)) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", rank_, ": AllToAllV (", what, "): ", send_bytes.size(),
                                                     " send counts for a world of ", world_));
    }
    RETURN_IF_ERROR(CudaError(cudaSetDevice(device_), "cudaSetDevice"));
    // Counts: every rank's row of send counts, gathered everywhere.
    std::vector<uint64_t> mine(send_bytes.begin(), send_bytes.end()), all(world_ * world_);
    RETURN_IF_ERROR(counts_.Reserve((world_ + world_ * world_) * sizeof(uint64_t)));
    auto* d_mine = counts_.as<uint64_t>();
    uint64_t* d_all = d_mine + world_;
    RETURN_IF_ERROR(CudaError(cudaMemcpyAsync(d_mine, mine.data(), world_ * 8, cudaMemcpyHostToDevice, stream_), "counts"));
    RETURN_IF_ERROR(Issue(ncclAllGather(d_mine, d_all, world_, ncclUint64, comm_, stream_), "AllToAllV", what));
    RETURN_IF_ERROR(Wait("AllToAllV", what, "byte counts from", AllPeers()));
    RETURN_IF_ERROR(CudaError(cudaMemcpy(all.data(), d_all, all.size() * 8, cudaMemcpyDeviceToHost), "counts"));
    std::vector<uint64_t> incoming(world_);
    for (int p = 0; p < world_; ++p) incoming[p] = all[p * world_ + rank_];
    RETURN_IF_ERROR(CheckIncomingCounts(incoming, rank_, what));
    std::vector<size_t> send_offsets(world_, 0), recv_offsets(world_, 0);
    size_t send_total = 0, recv_total = 0;
    recv_bytes.assign(world_, 0);
    std::set<int> peers;
    for (int p = 0; p < world_; ++p) {
      send_offsets[p] = send_total;
      send_total += send_bytes[p];
      recv_bytes[p] = incoming[p];
      recv_offsets[p] = recv_total;
      recv_total += recv_bytes[p];
      if (p != rank_ && (send_bytes[p] > 0 || recv_bytes[p] > 0)) peers.insert(p);
    }
    RETURN_IF_ERROR(send_.Reserve(std::max<size_t>(send_total, 1)));
    RETURN_IF_ERROR(recv_.Reserve(std::max<size_t>(recv_total, 1)));
    if (send_total > 0) {
      RETURN_IF_ERROR(CudaError(cudaMemcpyAsync(send_.data(), send, send_total, cudaMemcpyHostToDevice, stream_), "payload"));
    }
    RETURN_IF_ERROR(Issue(ncclGroupStart(), "AllToAllV", what));
    for (int p = 0; p < world_; ++p) {
      if (send_bytes[p] > 0) {
        RETURN_IF_ERROR(Issue(ncclSend(send_.as<uint8_t>() + send_offsets[p], send_bytes[p], ncclUint8, p, comm_, stream_),
                              "AllToAllV", what));
      }
      if (recv_bytes[p] > 0) {
        RETURN_IF_ERROR(Issue(ncclRecv(recv_.as<uint8_t>() + recv_offsets[p], recv_bytes[p], ncclUint8, p, comm_, stream_),
                              "AllToAllV", what));
      }
    }
    RETURN_IF_ERROR(Issue(ncclGroupEnd(), "AllToAllV", what));
    RETURN_IF_ERROR(Wait("AllToAllV", what, "payload with", peers));
    recv.resize(recv_total);
    if (recv_total > 0) {
      RETURN_IF_ERROR(CudaError(cudaMemcpy(recv.data(), recv_.data(), recv_total, cudaMemcpyDeviceToHost), "payload"));
    }
    return absl::OkStatus();
  }

  absl::Status AllReduceSum(std::vector<int64_t>& values, const std::string& what) override {
    RETURN_IF_ERROR(Usable("AllReduceSum", what));
    RETURN_IF_ERROR(CudaError(cudaSetDevice(device_), "cudaSetDevice"));
    const size_t n = values.size();
    RETURN_IF_ERROR(counts_.Reserve(std::max<size_t>(n, 1) * 8));
    RETURN_IF_ERROR(CudaError(cudaMemcpyAsync(counts_.data(), values.data(), n * 8, cudaMemcpyHostToDevice, stream_), "values"));
    RETURN_IF_ERROR(Issue(ncclAllReduce(counts_.data(), counts_.data(), n, ncclInt64, ncclSum, comm_, stream_), "AllReduceSum", what));
    RETURN_IF_ERROR(Wait("AllReduceSum", what, "values from", AllPeers()));
    return CudaError(cudaMemcpy(values.data(), counts_.data(), n * 8, cudaMemcpyDeviceToHost), "values");
  }

  absl::Status Barrier(const std::string& what) override {
    std::vector<int64_t> one = {1};
    RETURN_IF_ERROR(AllReduceSum(one, what));
    if (one[0] != world_) {
      return absl::InternalError(absl::StrCat("rank ", rank_, ": Barrier (", what, "): ", one[0], " of ", world_, " ranks arrived"));
    }
    return absl::OkStatus();
  }

 private:
  std::set<int> AllPeers() const {
    std::set<int> s;
    for (int p = 0; p < world_; ++p)
      if (p != rank_) s.insert(p);
    return s;
  }

  absl::Status Usable(const char* kind, const std::string& what) const {
    if (broken_.empty()) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat("rank ", rank_, ": ", kind, " (", what,
                                                      "): transport unusable after an earlier failure: ", broken_));
  }

  absl::Status Issue(ncclResult_t r, const char* kind, const std::string& what) {
    absl::Status s = NcclError(r, absl::StrCat("rank ", rank_, ": ", kind, " (", what, ")"));
    if (!s.ok()) Break(s);
    return s;
  }

  void Break(const absl::Status& s) {
    if (!broken_.empty()) return;
    broken_ = std::string(s.message());
    (void)ncclCommAbort(comm_);
  }

  // Polls the communicator and the stream until the collective is done, it fails, or the
  // deadline passes (then aborts the communicator).
  absl::Status Wait(const char* kind, const std::string& what, const char* stage, const std::set<int>& peers) {
    const auto start = Clock::now(), expiry = start + deadline();
    while (true) {
      ncclResult_t state = ncclSuccess;
      if (ncclResult_t r = ncclCommGetAsyncError(comm_, &state); r != ncclSuccess) state = r;
      if (state != ncclSuccess && state != ncclInProgress) {
        absl::Status s = NcclError(state, absl::StrCat("rank ", rank_, ": ", kind, " (", what, ")"));
        Break(s);
        return s;
      }
      if (state == ncclSuccess) {
        const cudaError_t q = cudaStreamQuery(stream_);
        if (q == cudaSuccess) return absl::OkStatus();
        if (q != cudaErrorNotReady) {
          absl::Status s = CudaError(q, absl::StrCat("rank ", rank_, ": ", kind, " (", what, ")"));
          Break(s);
          return s;
        }
      }
      if (Clock::now() >= expiry) {
        absl::Status s = absl::DeadlineExceededError(absl::StrCat(
            "rank ", rank_, ": ", kind, " (", what, ") timed out after ", deadline().count(), " ms waiting for ", stage,
            " ", RankList(peers), " (NCCL does not say which is late; the communicator is aborted)"));
        Break(s);
        return s;
      }
      if (Clock::now() - start > std::chrono::milliseconds(1)) std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  const int rank_, world_, device_;
  std::string broken_;
  cuda::DeviceBuffer counts_, send_, recv_;
};

}  // namespace

absl::StatusOr<std::string> NewNcclUniqueId() {
  ncclUniqueId id;
  RETURN_IF_ERROR(NcclError(ncclGetUniqueId(&id), "ncclGetUniqueId"));
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<Transport>> MakeNcclTransport(const std::string& unique_id, int rank, int world,
                                                             int device, std::chrono::milliseconds init_deadline) {
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal)) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL unique id of ", unique_id.size(), " bytes, expected ", sizeof(id.internal)));
  }
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  RETURN_IF_ERROR(CudaError(cudaSetDevice(device), absl::StrCat("cudaSetDevice(", device, ")")));
  cudaStream_t stream;
  RETURN_IF_ERROR(CudaError(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm;
  ncclResult_t r = ncclCommInitRankConfig(&comm, world, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    (void)cudaStreamDestroy(stream);
    return NcclError(r, absl::StrCat("rank ", rank, ": ncclCommInitRankConfig"));
  }
  const auto expiry = Clock::now() + init_deadline;
  ncclResult_t state = ncclInProgress;
  while (true) {
    if (ncclResult_t e = ncclCommGetAsyncError(comm, &state); e != ncclSuccess) state = e;
    if (state != ncclInProgress) break;
    if (Clock::now() >= expiry) {
      (void)ncclCommAbort(comm);
      (void)cudaStreamDestroy(stream);
      return absl::DeadlineExceededError(absl::StrCat("rank ", rank, ": NCCL communicator of ", world, " ranks not formed after ",
                                                      init_deadline.count(), " ms (waiting for the other ranks to join)"));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  if (state != ncclSuccess) {
    (void)ncclCommAbort(comm);
    (void)cudaStreamDestroy(stream);
    return NcclError(state, absl::StrCat("rank ", rank, ": ncclCommInitRankConfig"));
  }
  return std::unique_ptr<Transport>(std::make_unique<NcclTransport>(comm, stream, rank, world, device));
}

absl::StatusOr<std::unique_ptr<Transport>> MakeNcclTransportOver(Transport& bootstrap, int device) {
  const int rank = bootstrap.rank(), world = bootstrap.world_size();
  std::string id;
  if (rank == 0) {
    ASSIGN_OR_RETURN(id, NewNcclUniqueId());
  }
  std::string send;
  std::vector<size_t> send_bytes(world, rank == 0 ? id.size() : 0);
  for (int r = 0; r < world && rank == 0; ++r) send += id;
  std::vector<uint8_t> recv;
  std::vector<size_t> recv_bytes;
  RETURN_IF_ERROR(bootstrap.AllToAllV(send.data(), send_bytes, recv, recv_bytes, "sharing the NCCL unique id"));
  return MakeNcclTransport(std::string(recv.begin(), recv.end()), rank, world, device, bootstrap.deadline());
}

}  // namespace daedalus
