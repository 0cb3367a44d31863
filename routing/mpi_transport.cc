#include "routing/mpi_transport.h"

// Only the C API: OpenMPI's deprecated C++ bindings do not compile cleanly under -Wextra.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"

namespace daedalus {
namespace {

using Clock = std::chrono::steady_clock;

// One tag per kind of message: on our own communicator, messages from one sender with one tag
// are matched in the order sent, so consecutive collectives and the chunks of one payload
// cannot be confused.
enum class Stage { kCounts = 101, kPayload = 102, kValues = 103, kBarrier = 104 };

const char* StageName(Stage s) {
  switch (s) {
    case Stage::kCounts: return "byte counts";
    case Stage::kPayload: return "payload";
    case Stage::kValues: return "values";
    case Stage::kBarrier: return "barrier";
  }
  return "?";
}

std::string MpiErrorString(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) return absl::StrCat("MPI error ", rc);
  return std::string(text, len);
}

std::string RankList(const std::set<int>& ranks) {
  return absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(ranks, ", "));
}

struct Message {
  int peer;
  bool send;
  Stage stage;
  int bytes;
};

// One collective in flight: its requests and every buffer they read or write, kept together
// so that an expired collective can be parked with its buffers alive.
struct Inflight {
  const char* kind;
  std::string what;
  std::vector<MPI_Request> requests;
  std::vector<Message> messages;  // parallel to `requests`
  absl::Status post_error;  // the first failure to post a message; later posts are skipped
  size_t n_pending = 0;
  size_t n_count_recvs_pending = 0;
  bool payload_posted = true;          // AllToAllV: false until every byte count has arrived
  std::vector<uint64_t> send_counts;   // [world] AllToAllV
  std::vector<uint64_t> recv_counts;   // [world]
  std::vector<size_t> recv_offsets;    // [world]
  std::vector<uint8_t> recv;           // the caller's buffer, swapped in
  std::vector<int64_t> send_values;    // [n] AllReduceSum
  std::vector<int64_t> recv_values;    // [world, n]
  std::vector<int> done_index;         // MPI_Testsome scratch
  std::vector<MPI_Status> done_status;
};

class MpiTransport final : public Transport {
 public:
  MpiTransport(MPI_Comm comm, int rank, int world, size_t max_message_bytes)
      : comm_(comm), rank_(rank), world_(world), max_message_bytes_(max_message_bytes) {}
  ~MpiTransport() override {
    // MPI may still write into an expired collective's buffers: leave them allocated.
    if (expired_ && expired_->n_pending > 0) (void)expired_.release();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
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
    auto op = NewOp("AllToAllV", what);
    op->send_counts.assign(send_bytes.begin(), send_bytes.end());
    op->recv_counts.assign(world_, 0);
    op->recv_counts[rank_] = send_bytes[rank_];
    op->recv.swap(recv);  // reuse the caller's capacity
    op->payload_posted = false;
    for (int p = 0; p < world_; ++p) {
      if (p != rank_) Post(*op, false, p, Stage::kCounts, &op->recv_counts[p], sizeof(uint64_t));
    }
    op->n_count_recvs_pending = op->n_pending;
    const uint8_t* bytes = static_cast<const uint8_t*>(send);
    std::vector<size_t> send_offsets(world_, 0);
    for (int p = 1; p < world_; ++p) send_offsets[p] = send_offsets[p - 1] + send_bytes[p - 1];
    for (int p = 0; p < world_; ++p) {
      if (p == rank_) continue;
      Post(*op, true, p, Stage::kCounts, &op->send_counts[p], sizeof(uint64_t));
      if (send_bytes[p] > 0) {
        Post(*op, true, p, Stage::kPayload, const_cast<uint8_t*>(bytes + send_offsets[p]), send_bytes[p]);
      }
    }
    RETURN_IF_ERROR(Finish(op));
    if (send_bytes[rank_] > 0) {
      std::memcpy(op->recv.data() + op->recv_offsets[rank_], bytes + send_offsets[rank_], send_bytes[rank_]);
    }
    recv.swap(op->recv);
    recv_bytes.assign(op->recv_counts.begin(), op->recv_counts.end());
    return absl::OkStatus();
  }

  absl::Status AllReduceSum(std::vector<int64_t>& values, const std::string& what) override {
    RETURN_IF_ERROR(Usable("AllReduceSum", what));
    const size_t n = values.size();
    auto op = NewOp("AllReduceSum", what);
    op->send_values = values;
    op->recv_values.assign(n * world_, 0);
    for (int p = 0; p < world_; ++p) {
      if (p != rank_) Post(*op, false, p, Stage::kValues, op->recv_values.data() + p * n, n * sizeof(int64_t));
    }
    for (int p = 0; p < world_; ++p) {
      if (p != rank_) Post(*op, true, p, Stage::kValues, op->send_values.data(), n * sizeof(int64_t));
    }
    RETURN_IF_ERROR(Finish(op));
    for (size_t i = 0; i < n; ++i) {
      int64_t sum = 0;  // in rank order on every rank
      for (int p = 0; p < world_; ++p) sum += p == rank_ ? op->send_values[i] : op->recv_values[p * n + i];
      values[i] = sum;
    }
    return absl::OkStatus();
  }

  absl::Status Barrier(const std::string& what) override {
    RETURN_IF_ERROR(Usable("Barrier", what));
    auto op = NewOp("Barrier", what);
    for (int p = 0; p < world_; ++p) {
      if (p != rank_) Post(*op, false, p, Stage::kBarrier, nullptr, 0);
    }
    for (int p = 0; p < world_; ++p) {
      if (p != rank_) Post(*op, true, p, Stage::kBarrier, nullptr, 0);
    }
    return Finish(op);
  }

  absl::Status Drain(std::chrono::milliseconds limit) {
    if (!expired_) return absl::OkStatus();
    RETURN_IF_ERROR(Wait(*expired_, Clock::now() + limit, limit));
    expired_.reset();
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Inflight> NewOp(const char* kind, const std::string& what) {
    auto op = std::make_unique<Inflight>();
    op->kind = kind;
    op->what = what;
    return op;
  }

  absl::Status Usable(const char* kind, const std::string& what) const {
    if (broken_.empty()) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat("rank ", rank_, ": ", kind, " (", what,
                                                      "): transport unusable after an earlier failure: ", broken_));
  }

  // Posts one non-blocking message of `bytes`, split into chunks of at most max_message_bytes_
  // (an empty message when bytes is 0). A failure is kept in op.post_error for Finish.
  void Post(Inflight& op, bool send, int peer, Stage stage, void* buf, size_t bytes) {
    if (!op.post_error.ok()) return;
    uint8_t* p = static_cast<uint8_t*>(buf);
    size_t left = bytes;
    do {
      const int chunk = static_cast<int>(std::min(left, max_message_bytes_));
      MPI_Request request;
      const int tag = static_cast<int>(stage);
      const int rc = send ? MPI_Isend(p, chunk, MPI_BYTE, peer, tag, comm_, &request)
                          : MPI_Irecv(p, chunk, MPI_BYTE, peer, tag, comm_, &request);
      if (rc != MPI_SUCCESS) {
        op.post_error = absl::InternalError(absl::StrCat("rank ", rank_, ": ", op.kind, " (", op.what, "): posting ",
                                                         StageName(stage), send ? " to rank " : " from rank ", peer,
                                                         ": ", MpiErrorString(rc)));
        return;
      }
      op.requests.push_back(request);
      op.messages.push_back({peer, send, stage, chunk});
      ++op.n_pending;
      if (p != nullptr) p += chunk;
      left -= chunk;
    } while (left > 0);
  }

  // AllToAllV, once every byte count has arrived: sizes the receive buffer, posts the receives.
  absl::Status PostPayloadReceives(Inflight& op) {
    RETURN_IF_ERROR(CheckIncomingCounts(op.recv_counts, rank_, op.what));
    op.recv_offsets.assign(world_, 0);
    size_t total = 0;
    for (int p = 0; p < world_; ++p) {
      op.recv_offsets[p] = total;
      total += op.recv_counts[p];
    }
    op.recv.resize(total);
    op.payload_posted = true;
    for (int p = 0; p < world_; ++p) {
      if (p != rank_ && op.recv_counts[p] > 0) {
        Post(op, false, p, Stage::kPayload, op.recv.data() + op.recv_offsets[p], op.recv_counts[p]);
      }
    }
    return op.post_error;
  }

  // Tests for completed messages; checks that every receive got the size it expected.
  absl::Status Progress(Inflight& op, bool& progressed) {
    const int n = static_cast<int>(op.requests.size());
    op.done_index.resize(n);
    op.done_status.resize(n);
    int n_done = 0;
    const int rc = MPI_Testsome(n, op.requests.data(), &n_done, op.done_index.data(), op.done_status.data());
    progressed = rc == MPI_SUCCESS && n_done != MPI_UNDEFINED && n_done > 0;
    if (n_done == MPI_UNDEFINED) n_done = 0;
    for (int k = 0; k < n_done; ++k) {
      const Message& m = op.messages[op.done_index[k]];
      const MPI_Status& st = op.done_status[k];
      int got = m.bytes;
      if (!m.send) MPI_Get_count(&st, MPI_BYTE, &got);
      if ((rc == MPI_ERR_IN_STATUS && st.MPI_ERROR != MPI_SUCCESS) || got != m.bytes) {
        return absl::InternalError(absl::StrCat(
            "rank ", rank_, ": ", op.kind, " (", op.what, "): ", StageName(m.stage), m.send ? " to" : " from",
            " rank ", m.peer, ": ", rc == MPI_ERR_IN_STATUS ? MpiErrorString(st.MPI_ERROR) : "",
            got != m.bytes ? absl::StrCat(" got ", got, " bytes, expected ", m.bytes) : ""));
      }
      --op.n_pending;
      if (m.stage == Stage::kCounts && !m.send) --op.n_count_recvs_pending;
    }
    if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) {
      return absl::InternalError(
          absl::StrCat("rank ", rank_, ": ", op.kind, " (", op.what, "): MPI_Testsome: ", MpiErrorString(rc)));
    }
    return absl::OkStatus();
  }

  absl::Status Wait(Inflight& op, Clock::time_point expiry, std::chrono::milliseconds limit) {
    Clock::time_point last_progress = Clock::now();
    while (true) {
      bool progressed = false;
      RETURN_IF_ERROR(Progress(op, progressed));
      if (!op.payload_posted && op.n_count_recvs_pending == 0) RETURN_IF_ERROR(PostPayloadReceives(op));
      if (op.payload_posted && op.n_pending == 0) return absl::OkStatus();
      const Clock::time_point now = Clock::now();
      if (now >= expiry) return Expired(op, limit);
      // Keep calling into MPI: a large message moves in fragments only while we poll, and
      // MPI_Testsome reports whole messages, so "no completion" is not "idle". Yield the core
      // (oversubscribed peers may need it); sleep only after a long wait for a late peer.
      // (Sleeping 20 us between polls cut large all-to-alls to a tenth of MPI_Alltoallv.)
      if (progressed) {
        last_progress = now;
      } else if (now - last_progress > std::chrono::milliseconds(50)) {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      } else if (now - last_progress > std::chrono::microseconds(200)) {
        std::this_thread::yield();
      }
    }
  }

  absl::Status Expired(const Inflight& op, std::chrono::milliseconds limit) const {
    std::set<int> from, to;
    std::map<std::pair<Stage, bool>, std::set<int>> detail;
    for (size_t i = 0; i < op.requests.size(); ++i) {
      if (op.requests[i] == MPI_REQUEST_NULL) continue;
      const Message& m = op.messages[i];
      (m.send ? to : from).insert(m.peer);
      detail[{m.stage, m.send}].insert(m.peer);
    }
    std::vector<std::string> parts;
    for (const auto& [key, peers] : detail) {
      parts.push_back(absl::StrCat(StageName(key.first), key.second ? " to " : " from ", absl::StrJoin(peers, ", ")));
    }
    return absl::DeadlineExceededError(absl::StrCat("rank ", rank_, ": ", op.kind, " (", op.what, ") timed out after ",
                                                    limit.count(), " ms waiting for ",
                                                    RankList(from.empty() ? to : from), " [pending: ",
                                                    absl::StrJoin(parts, "; "), "]"));
  }

  // Waits for `op`; on any failure parks it (its requests may still be in flight) and marks
  // the transport unusable.
  absl::Status Finish(std::unique_ptr<Inflight>& op) {
    absl::Status s = op->post_error.ok() ? Wait(*op, Clock::now() + deadline(), deadline()) : op->post_error;
    if (s.ok()) return s;
    broken_ = std::string(s.message());
    expired_ = std::move(op);
    return s;
  }

  MPI_Comm comm_;
  const int rank_;
  const int world_;
  const size_t max_message_bytes_;
  std::string broken_;                  // the failure that made this transport unusable
  std::unique_ptr<Inflight> expired_;  // the collective that failed, while it has requests
};

}  // namespace

bool LaunchedByMpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr ||
         std::getenv("PMIX_RANK") != nullptr;
}

absl::Status InitMpi(int* argc, char*** argv) {
  int initialized = 0, finalized = 0, provided = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) return absl::FailedPreconditionError("InitMpi: MPI was already finalized");
  if (initialized) {
    MPI_Query_thread(&provided);
  } else if (int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided); rc != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat("MPI_Init_thread: ", MpiErrorString(rc)));
  }
  if (provided < MPI_THREAD_FUNNELED) {
    return absl::FailedPreconditionError(
        absl::StrCat("InitMpi: MPI provides thread level ", provided, ", below MPI_THREAD_FUNNELED"));
  }
  return absl::OkStatus();
}

void FinalizeMpi() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Finalize();
}

void AbortMpi(int code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

absl::StatusOr<std::unique_ptr<Transport>> MakeMpiTransport(size_t max_message_bytes, int group) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    return absl::FailedPreconditionError("MakeMpiTransport: MPI is not initialized; call InitMpi first");
  }
  if (max_message_bytes < 1 || max_message_bytes > 2147483647u) {
    return absl::InvalidArgumentError(
        absl::StrCat("MakeMpiTransport: max_message_bytes ", max_message_bytes, " is outside 1 .. 2^31-1"));
  }
  MPI_Comm comm;
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  if (int rc = MPI_Comm_split(MPI_COMM_WORLD, group, world_rank, &comm); rc != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat("MPI_Comm_split: ", MpiErrorString(rc)));
  }
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int rank = 0, world = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &world);
  return std::unique_ptr<Transport>(std::make_unique<MpiTransport>(comm, rank, world, max_message_bytes));
}

absl::Status DrainAfterDeadline(Transport& t, std::chrono::milliseconds limit) {
  auto* mpi = dynamic_cast<MpiTransport*>(&t);
  if (mpi == nullptr) return absl::InvalidArgumentError("DrainAfterDeadline: not an MPI transport");
  return mpi->Drain(limit);
}

}  // namespace daedalus
