#include "routing/ucx_transport.h"


#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "routing/ucp_worker.h"

namespace daedalus {

namespace {

using Clock = std::chrono::steady_clock;

enum Stage : uint64_t { kCounts = 1, kPayload = 2 };

// tag = [epoch: 16 bits][sequence: 24 bits][sender rank: 16 bits][stage: 8 bits]. Sequence
// numbers wrap, harmlessly: every rank's collectives pair in order.
uint64_t Tag(int64_t epoch, uint64_t sequence, int sender, Stage stage) {
  return (static_cast<uint64_t>(epoch & 0xffff) << 48) | ((sequence & 0xffffff) << 24) |
         (static_cast<uint64_t>(sender) << 8) | stage;
}

class Ucx final : public UcxTransport {
 public:
  Ucx() = default;
  ~Ucx() override;

  absl::Status Init();
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  const std::string& address() const override { return address_; }
  absl::Status Connect(int rank, const std::vector<std::string>& addresses, int64_t epoch) override;
  absl::Status Reform(int rank, const std::vector<std::string>& addresses, int64_t epoch) override;
  int64_t epoch() const override { return epoch_; }
  std::vector<int> waited_for() const override { return waited_for_; }
  void Interrupt(int64_t epoch) override {
    int64_t was = interrupt_below_.load();
    while (was < epoch && !interrupt_below_.compare_exchange_weak(was, epoch)) {
    }
  }

  absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes, std::vector<uint8_t>& recv,
                         std::vector<size_t>& recv_bytes, const std::string& what) override {
    return Exchange("all-to-all", send, send_bytes, recv, recv_bytes, what);
  }
  absl::Status AllReduceSum(std::vector<int64_t>& values, const std::string& what) override;
  absl::Status Barrier(const std::string& what) override;

 private:
  struct Pending {
    void* request;  // UCX request, null once complete
    int peer;
    bool send;
    Stage stage;
  };
  // AllToAllV, named `kind` in errors (the other collectives are built on it).
  absl::Status Exchange(const char* kind, const void* send, const std::vector<size_t>& send_bytes, std::vector<uint8_t>& recv,
                        std::vector<size_t>& recv_bytes, const std::string& what);
  // Sends or receives, adding the request to `pending` unless it completed at once.
  absl::Status Post(std::vector<Pending>& pending, bool send, int peer, Stage stage, void* buffer, size_t bytes);
  // Polls until every request in `pending` completes (true), one fails, or the deadline passes.
  absl::Status Wait(std::vector<Pending>& pending, const char* kind, const std::string& what, Clock::time_point expiry);
  absl::Status Expired(const std::vector<Pending>& pending, const char* kind, const std::string& what);
  void CancelAll(std::vector<Pending>& pending);
  // An endpoint to `address` that reports errors as `peer`'s.
  absl::Status Open(int peer, const std::string& address, ucp_ep_h& endpoint);
  void Close(ucp_ep_h endpoint);
  absl::Status Interrupted(const char* kind, const std::string& what) const;

  int rank_ = 0, world_ = 1;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::vector<ucp_ep_h> endpoints_;
  std::vector<std::string> addresses_;  // by rank
  std::string address_;
  int64_t epoch_ = 0;
  std::atomic<int64_t> interrupt_below_{0};
  uint64_t sequence_ = 0;
  absl::Status broken_;  // after a failure, the reason every later call reports
  // Peers whose endpoint reported an error (UCX calls back from ucp_worker_progress).
  struct PeerHandle {
    Ucx* self;
    int peer;
  };
  static void OnEndpointError(void* arg, ucp_ep_h, ucs_status_t) {
    auto* h = static_cast<PeerHandle*>(arg);
    if (h->peer >= 0) h->self->failed_peers_.push_back(h->peer);
  }
  std::vector<std::unique_ptr<PeerHandle>> handles_;  // by rank (null for this one); peer -1: closed
  std::vector<std::unique_ptr<PeerHandle>> retired_;
  std::vector<int> failed_peers_;
  std::vector<int> waited_for_;  // by the last collective that failed
};

absl::Status Ucx::Init() {
  return OpenDataPlaneWorker(context_, worker_, address_);
}

absl::Status Ucx::Connect(int rank, const std::vector<std::string>& addresses, int64_t epoch) {
  if (!endpoints_.empty()) return absl::FailedPreconditionError("UCX: already connected");
  if (rank < 0 || rank >= static_cast<int>(addresses.size())) {
    return absl::InvalidArgumentError(absl::StrCat("UCX: rank ", rank, " outside a world of ", addresses.size()));
  }
  rank_ = rank;
  world_ = static_cast<int>(addresses.size());
  epoch_ = epoch;
  addresses_ = addresses;
  endpoints_.assign(world_, nullptr);
  handles_.resize(world_);
  for (int peer = 0; peer < world_; ++peer) {
    if (peer != rank_) RETURN_IF_ERROR(Open(peer, addresses[peer], endpoints_[peer]));
  }
  return absl::OkStatus();
}

absl::Status Ucx::Open(int peer, const std::string& address, ucp_ep_h& endpoint) {
  if (address.empty()) return absl::InvalidArgumentError(absl::StrCat("UCX: rank ", peer, " published no address"));
  handles_[peer] = std::make_unique<PeerHandle>(PeerHandle{this, peer});
  ucp_ep_params_t ep{};
  // No peer-failure mode: cma (one-copy reads between processes of one host) does not offer it
  // and would be left out, so large payloads on one host would go over TCP. A lost peer is found by the
  // coordinator (its control stream, its heartbeats) or the collective deadline instead, and by
  // the error handler where a transport reports it.
  ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.address = reinterpret_cast<const ucp_address_t*>(address.data());
  ep.err_handler.cb = OnEndpointError;
  ep.err_handler.arg = handles_[peer].get();
  if (ucs_status_t s = ucp_ep_create(worker_, &ep, &endpoint); s != UCS_OK) {
    return absl::UnavailableError(absl::StrCat("UCX: rank ", rank_, " cannot reach rank ", peer, ": ", ucs_status_string(s)));
  }
  return absl::OkStatus();
}

void Ucx::Close(ucp_ep_h endpoint) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_EP_CLOSE_FLAG_FORCE;
  void* request = ucp_ep_close_nbx(endpoint, &p);
  if (UCS_PTR_IS_PTR(request)) {
    const auto until = Clock::now() + std::chrono::seconds(2);
    while (ucp_request_check_status(request) == UCS_INPROGRESS && Clock::now() < until) ucp_worker_progress(worker_);
    ucp_request_free(request);
  }
}

absl::Status Ucx::Reform(int rank, const std::vector<std::string>& addresses, int64_t epoch) {
  if (rank < 0 || rank >= static_cast<int>(addresses.size()) || addresses[rank] != address_) {
    return absl::InvalidArgumentError(absl::StrCat("UCX: re-formed as rank ", rank, " of ", addresses.size(),
                                                   ", but that rank's address is not this process's"));
  }
  if (epoch <= epoch_) return absl::InvalidArgumentError(absl::StrCat("UCX: world ", epoch, " is not newer than ", epoch_));
  const int world = static_cast<int>(addresses.size());
  std::vector<ucp_ep_h> endpoints(world, nullptr);
  std::vector<std::unique_ptr<PeerHandle>> handles(world);
  // Keep the endpoint of every address still in the world; its handle now reports the new rank.
  for (int old = 0; old < world_; ++old) {
    if (old == rank_ || endpoints_[old] == nullptr) continue;
    const auto at = std::find(addresses.begin(), addresses.end(), addresses_[old]);
    if (at == addresses.end()) {
      handles_[old]->peer = -1;  // errors of a closing endpoint concern no one
      Close(endpoints_[old]);
      continue;
    }
    const int peer = static_cast<int>(at - addresses.begin());
    endpoints[peer] = endpoints_[old];
    handles[peer] = std::move(handles_[old]);
    handles[peer]->peer = peer;
  }
  for (auto& h : handles_)
    if (h != nullptr) retired_.push_back(std::move(h));  // a late callback may still name them
  rank_ = rank;
  world_ = world;
  addresses_ = addresses;
  endpoints_ = std::move(endpoints);
  handles_ = std::move(handles);
  for (int peer = 0; peer < world_; ++peer) {
    if (peer != rank_ && endpoints_[peer] == nullptr) RETURN_IF_ERROR(Open(peer, addresses[peer], endpoints_[peer]));
  }
  epoch_ = epoch;
  sequence_ = 0;
  failed_peers_.clear();
  waited_for_.clear();
  broken_ = absl::OkStatus();
  return absl::OkStatus();
}

absl::Status Ucx::Interrupted(const char* kind, const std::string& what) const {
  return absl::AbortedError(absl::StrCat("rank ", rank_, ": ", kind, " (", what, ") interrupted: the cluster re-forms"));
}

Ucx::~Ucx() {
  for (ucp_ep_h ep : endpoints_)
    if (ep != nullptr) Close(ep);
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

absl::Status Ucx::Post(std::vector<Pending>& pending, bool send, int peer, Stage stage, void* buffer, size_t bytes) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_DATATYPE;
  p.datatype = ucp_dt_make_contig(1);
  void* request;
  if (send) {
    request = ucp_tag_send_nbx(endpoints_[peer], buffer, bytes, Tag(epoch_, sequence_, rank_, stage), &p);
  } else {
    request = ucp_tag_recv_nbx(worker_, buffer, bytes, Tag(epoch_, sequence_, peer, stage), ~uint64_t{0}, &p);
  }
  if (UCS_PTR_IS_ERR(request)) {
    return absl::UnavailableError(absl::StrCat("rank ", rank_, ": UCX ", send ? "send to" : "receive from", " rank ", peer,
                                               ": ", ucs_status_string(UCS_PTR_STATUS(request))));
  }
  if (request != nullptr) pending.push_back({request, peer, send, stage});
  return absl::OkStatus();
}

void Ucx::CancelAll(std::vector<Pending>& pending) {
  for (Pending& p : pending) {
    if (p.request == nullptr) continue;
    if (!p.send) ucp_request_cancel(worker_, p.request);
  }
  const auto until = Clock::now() + std::chrono::milliseconds(500);
  for (Pending& p : pending) {
    if (p.request == nullptr) continue;
    while (ucp_request_check_status(p.request) == UCS_INPROGRESS && Clock::now() < until) ucp_worker_progress(worker_);
    if (ucp_request_check_status(p.request) != UCS_INPROGRESS) ucp_request_free(p.request);  // else leaked on purpose
    p.request = nullptr;
  }
}

absl::Status Ucx::Expired(const std::vector<Pending>& pending, const char* kind, const std::string& what) {
  std::set<int> from, to;
  for (const Pending& p : pending) {
    if (p.request != nullptr) (p.send ? to : from).insert(p.peer);
  }
  const std::set<int>& missing = from.empty() ? to : from;
  waited_for_.assign(missing.begin(), missing.end());
  return absl::DeadlineExceededError(absl::StrCat("rank ", rank_, ": ", kind, " (", what, ") timed out after ", deadline().count(),
                                                  " ms waiting for rank", missing.size() > 1 ? "s " : " ",
                                                  absl::StrJoin(missing, ", "), " (UCX)"));
}

absl::Status Ucx::Wait(std::vector<Pending>& pending, const char* kind, const std::string& what, Clock::time_point expiry) {
  auto last_progress = Clock::now();
  while (true) {
    const unsigned events = ucp_worker_progress(worker_);
    bool all_done = true;
    for (Pending& p : pending) {
      if (p.request == nullptr) continue;
      const ucs_status_t s = ucp_request_check_status(p.request);
      if (s == UCS_INPROGRESS) {
        all_done = false;
        continue;
      }
      ucp_request_free(p.request);
      p.request = nullptr;
      if (s != UCS_OK) {
        CancelAll(pending);
        return absl::UnavailableError(absl::StrCat("rank ", rank_, ": ", kind, " (", what, "): ", p.send ? "send to" : "receive from",
                                                   " rank ", p.peer, " failed: ", ucs_status_string(s), " (UCX)"));
      }
    }
    if (all_done) return absl::OkStatus();
    if (interrupt_below_.load() > epoch_) {  // first: a re-formation under way explains a lost peer too
      CancelAll(pending);
      return Interrupted(kind, what);
    }
    if (!failed_peers_.empty()) {
      waited_for_ = failed_peers_;
      CancelAll(pending);
      return absl::UnavailableError(absl::StrCat("rank ", rank_, ": ", kind, " (", what, "): lost the connection to rank",
                                                 failed_peers_.size() > 1 ? "s " : " ", absl::StrJoin(failed_peers_, ", "),
                                                 " (UCX)"));
    }
    const auto now = Clock::now();
    if (now >= expiry) {
      absl::Status s = Expired(pending, kind, what);
      CancelAll(pending);
      return s;
    }
    if (events > 0) {
      last_progress = now;
    } else if (now - last_progress > std::chrono::milliseconds(50)) {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    } else if (now - last_progress > std::chrono::microseconds(200)) {
      std::this_thread::yield();
    }
  }
}

absl::Status Ucx::Exchange(const char* kind, const void* send, const std::vector<size_t>& send_bytes,
                           std::vector<uint8_t>& recv, std::vector<size_t>& recv_bytes, const std::string& what) {
  // Interrupted first: the interrupted collective broke the transport too, and every later one
  // reports the interrupt (Aborted) until the Reform, as Transport::Interrupt says.
  if (interrupt_below_.load() > epoch_) return Interrupted(kind, what);
  if (!broken_.ok()) return broken_;
  if (static_cast<int>(send_bytes.size()) != world_) return absl::InvalidArgumentError("AllToAllV: one byte count per rank");
  const auto expiry = Clock::now() + deadline();
  ++sequence_;
  auto fail = [&](absl::Status s) {
    broken_ = absl::FailedPreconditionError(absl::StrCat("the UCX transport failed earlier: ", s.message()));
    return s;
  };
  // Counts first.
  std::vector<uint64_t> out_counts(send_bytes.begin(), send_bytes.end()), in_counts(world_, 0);
  std::vector<Pending> pending;
  for (int peer = 0; peer < world_; ++peer) {
    if (peer == rank_) continue;
    if (absl::Status s = Post(pending, false, peer, kCounts, &in_counts[peer], sizeof(uint64_t)); !s.ok()) return fail(s);
    if (absl::Status s = Post(pending, true, peer, kCounts, &out_counts[peer], sizeof(uint64_t)); !s.ok()) return fail(s);
  }
  if (absl::Status s = Wait(pending, kind, what, expiry); !s.ok()) return fail(s);
  in_counts[rank_] = send_bytes[rank_];
  if (absl::Status s = CheckIncomingCounts(in_counts, rank_, what); !s.ok()) return fail(s);
  recv_bytes.assign(in_counts.begin(), in_counts.end());
  std::vector<size_t> recv_at(world_, 0), send_at(world_, 0);
  size_t total = 0, sent = 0;
  for (int r = 0; r < world_; ++r) {
    recv_at[r] = total;
    total += recv_bytes[r];
    send_at[r] = sent;
    sent += send_bytes[r];
  }
  recv.resize(total);
  pending.clear();
  const auto* bytes = static_cast<const uint8_t*>(send);
  for (int peer = 0; peer < world_; ++peer) {
    if (peer == rank_) {
      if (recv_bytes[peer] > 0) std::memcpy(recv.data() + recv_at[peer], bytes + send_at[peer], recv_bytes[peer]);
      continue;
    }
    if (recv_bytes[peer] > 0) {
      if (absl::Status s = Post(pending, false, peer, kPayload, recv.data() + recv_at[peer], recv_bytes[peer]); !s.ok()) return fail(s);
    }
    if (send_bytes[peer] > 0) {
      if (absl::Status s = Post(pending, true, peer, kPayload, const_cast<uint8_t*>(bytes + send_at[peer]), send_bytes[peer]);
          !s.ok()) {
        return fail(s);
      }
    }
  }
  if (absl::Status s = Wait(pending, kind, what, expiry); !s.ok()) return fail(s);
  return absl::OkStatus();
}

absl::Status Ucx::AllReduceSum(std::vector<int64_t>& values, const std::string& what) {
  const size_t n = values.size() * sizeof(int64_t);
  std::string send;
  for (int r = 0; r < world_; ++r) send.append(reinterpret_cast<const char*>(values.data()), n);
  std::vector<size_t> send_bytes(world_, n), recv_bytes;
  std::vector<uint8_t> recv;
  RETURN_IF_ERROR(Exchange("all-reduce", send.data(), send_bytes, recv, recv_bytes, what));
  for (int r = 0; r < world_; ++r) {
    if (recv_bytes[r] != n) return absl::InternalError(absl::StrCat("all-reduce (", what, "): rank ", r, " sent a different size"));
  }
  std::vector<int64_t> sum(values.size(), 0);
  for (int r = 0; r < world_; ++r) {  // in rank order on every rank
    const auto* v = reinterpret_cast<const int64_t*>(recv.data() + r * n);
    for (size_t i = 0; i < values.size(); ++i) sum[i] += v[i];
  }
  values = std::move(sum);
  return absl::OkStatus();
}

absl::Status Ucx::Barrier(const std::string& what) {
  std::vector<int64_t> one = {1};
  return AllReduceSum(one, what);
}

}  // namespace

absl::StatusOr<std::unique_ptr<UcxTransport>> CreateUcxTransport() {
  auto t = std::make_unique<Ucx>();
  RETURN_IF_ERROR(t->Init());
  return std::unique_ptr<UcxTransport>(std::move(t));
}

}  // namespace daedalus
