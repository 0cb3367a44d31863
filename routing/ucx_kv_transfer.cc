#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "routing/kv_transfer.h"
#include "routing/ucp_worker.h"

namespace daedalus {

namespace {

using Clock = std::chrono::steady_clock;

// A published pool key: the pool's base address and length, then UCX's packed remote key.
// False when it is too short to hold all three.
bool PoolSpan(const std::string& key, uint64_t& base, uint64_t& length) {
  if (key.size() <= 2 * sizeof(uint64_t)) return false;
  std::memcpy(&base, key.data(), sizeof base);
  std::memcpy(&length, key.data() + sizeof(uint64_t), sizeof length);
  return true;
}

class UcxKvTransfer final : public KvTransfer {
 public:
  UcxKvTransfer(uint8_t* pool, size_t bytes, std::chrono::milliseconds timeout)
      : pool_(pool), bytes_(bytes), timeout_(timeout) {}
  ~UcxKvTransfer() override;
  absl::Status Init();

  const std::string& address() const override { return address_; }
  const std::string& pool_key() const override { return pool_key_; }
  uint64_t Read(const std::string& peer_address, const std::string& peer_key, std::vector<Range> ranges) override;
  std::vector<Done> Poll() override;

 private:
  struct Peer {
    ucp_ep_h endpoint = nullptr;
    ucp_rkey_h rkey = nullptr;
    std::string key;  // as published: base address, length, then the packed key
    uint64_t base = 0;
    bool failed = false;
    ucs_status_t why = UCS_OK;
  };
  struct Transfer {
    uint64_t ticket = 0;
    std::string peer;  // address
    std::string key;
    std::vector<Range> ranges;
    Clock::time_point started;
    int outstanding = 0;
    bool posted = false;
    absl::Status status;
    size_t bytes = 0;
  };
  void Run();
  // Idle: sleeps until the network or a Read has something for the thread (or 100 ms pass).
  void Sleep();
  void Wake();  // from Read and the destructor
  void Post(Transfer& t);
  // Closes the peer's endpoint (its reads end, cancelled) and forgets it. A peer not known to
  // have failed is flushed first (Flush): UCX 1.13 aborts a process whose connection setup is
  // cut short by the other side's close (the responder's pending reply trips an assertion when
  // purged, removed in UCX 1.14), so a decode worker that closed early would take its prefill
  // worker down.
  enum class Close { kFlushFirst, kForce };
  void Drop(const std::string& address, Close how);
  // Lets the connection setup and the reads of every peer given that has not failed finish,
  // all at once, for at most a second (and at most the transfer timeout).
  void Flush(const std::vector<Peer*>& peers);
  Peer* Connect(const std::string& address, const std::string& key, absl::Status& error);
  static void OnRead(void* request, ucs_status_t status, void* transfer);  // a posted read's end
  static void OnEndpointError(void* arg, ucp_ep_h, ucs_status_t status) {
    auto* peer = static_cast<Peer*>(arg);
    peer->failed = true;
    peer->why = status;
  }

  uint8_t* const pool_;
  const size_t bytes_;
  const std::chrono::milliseconds timeout_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_mem_h memory_ = nullptr;
  int ucp_fd_ = -1, wake_fd_ = -1;  // the UCP worker's event fd; an eventfd the thread sleeps on too
  std::string address_, pool_key_;
  std::map<std::string, std::unique_ptr<Peer>> peers_;  // by address; the transfer thread's
  std::map<uint64_t, std::unique_ptr<Transfer>> active_;  // the transfer thread's

  std::mutex mu_;
  std::deque<std::unique_ptr<Transfer>> incoming_;
  std::vector<Done> done_;
  uint64_t next_ticket_ = 1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

absl::Status UcxKvTransfer::Init() {
  if (absl::Status s = OpenUcpWorker(UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP, "KV transfer", context_, worker_, address_); !s.ok()) {
    return s;
  }
  if (ucs_status_t e = ucp_worker_get_efd(worker_, &ucp_fd_); e != UCS_OK) {
    return absl::InternalError(absl::StrCat("ucp_worker_get_efd: ", ucs_status_string(e)));
  }
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  mp.address = pool_;
  mp.length = bytes_;
  if (ucs_status_t m = ucp_mem_map(context_, &mp, &memory_); m != UCS_OK) {
    return absl::InternalError(absl::StrCat("ucp_mem_map of the KV pool (", bytes_, " bytes): ", ucs_status_string(m)));
  }
  void* packed = nullptr;
  size_t packed_size = 0;
  if (ucs_status_t k = ucp_rkey_pack(context_, memory_, &packed, &packed_size); k != UCS_OK) {
    return absl::InternalError(absl::StrCat("ucp_rkey_pack: ", ucs_status_string(k)));
  }
  const uint64_t base = reinterpret_cast<uintptr_t>(pool_), length = bytes_;
  pool_key_.assign(reinterpret_cast<const char*>(&base), sizeof base);
  pool_key_.append(reinterpret_cast<const char*>(&length), sizeof length);
  pool_key_.append(static_cast<const char*>(packed), packed_size);
  ucp_rkey_buffer_release(packed);
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

UcxKvTransfer::~UcxKvTransfer() {
  stop_ = true;
  Wake();
  if (thread_.joinable()) thread_.join();
  if (wake_fd_ >= 0) close(wake_fd_);
  std::vector<Peer*> all;
  for (auto& [address, peer] : peers_) all.push_back(peer.get());
  Flush(all);  // together: a shutdown waits one bound, not one per silent peer
  while (!peers_.empty()) Drop(peers_.begin()->first, Close::kForce);
  if (memory_ != nullptr) ucp_mem_unmap(context_, memory_);
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

uint64_t UcxKvTransfer::Read(const std::string& peer_address, const std::string& peer_key, std::vector<Range> ranges) {
  auto t = std::make_unique<Transfer>();
  t->peer = peer_address;
  t->key = peer_key;
  t->ranges = std::move(ranges);
  t->started = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  t->ticket = next_ticket_++;
  const uint64_t ticket = t->ticket;
  incoming_.push_back(std::move(t));
  Wake();
  return ticket;
}

std::vector<KvTransfer::Done> UcxKvTransfer::Poll() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Done> out;
  out.swap(done_);
  return out;
}

UcxKvTransfer::Peer* UcxKvTransfer::Connect(const std::string& address, const std::string& key, absl::Status& error) {
  auto it = peers_.find(address);
  if (it != peers_.end() && it->second->key == key) return it->second.get();
  if (it != peers_.end()) Drop(address, Close::kFlushFirst);  // the same process with a new pool
  if (address.empty()) {
    error = absl::InvalidArgumentError("the prefill worker published no KV transfer address");
    return nullptr;
  }
  auto peer = std::make_unique<Peer>();
  peer->key = key;
  uint64_t length = 0;  // checked by Post
  PoolSpan(key, peer->base, length);
  ucp_ep_params_t ep{};
  // Peer-failure mode: a prefill worker that dies mid-transfer fails its reads instead of
  // leaving them hanging (UCX then picks transports that can detect it).
  ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.address = reinterpret_cast<const ucp_address_t*>(address.data());
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = OnEndpointError;
  ep.err_handler.arg = peer.get();
  if (ucs_status_t s = ucp_ep_create(worker_, &ep, &peer->endpoint); s != UCS_OK) {
    error = absl::UnavailableError(absl::StrCat("cannot reach the prefill worker: ", ucs_status_string(s)));
    return nullptr;
  }
  const char* packed = key.data() + 2 * sizeof(uint64_t);
  if (ucs_status_t s = ucp_ep_rkey_unpack(peer->endpoint, packed, &peer->rkey); s != UCS_OK) {
    error = absl::InvalidArgumentError(absl::StrCat("the prefill worker's pool key: ", ucs_status_string(s)));
    peers_[address] = std::move(peer);
    Drop(address, Close::kFlushFirst);
    return nullptr;
  }
  Peer* out = peer.get();
  peers_[address] = std::move(peer);
  return out;
}

void UcxKvTransfer::Flush(const std::vector<Peer*>& peers) {
  std::vector<void*> flushing;
  for (Peer* peer : peers) {
    if (peer->failed || peer->endpoint == nullptr) continue;
    ucp_request_param_t p{};
    void* flush = ucp_ep_flush_nbx(peer->endpoint, &p);
    if (UCS_PTR_IS_PTR(flush)) flushing.push_back(flush);
  }
  const auto until = Clock::now() + std::min<Clock::duration>(timeout_, std::chrono::seconds(1));
  auto busy = [&] {
    return std::any_of(flushing.begin(), flushing.end(),
                       [](void* f) { return ucp_request_check_status(f) == UCS_INPROGRESS; });
  };
  while (busy() && Clock::now() < until) ucp_worker_progress(worker_);
  for (void* f : flushing) ucp_request_free(f);  // one still under way is freed when the close ends it
}

void UcxKvTransfer::Drop(const std::string& address, Close how) {
  auto it = peers_.find(address);
  if (it == peers_.end()) return;
  Peer& peer = *it->second;
  if (how == Close::kFlushFirst) Flush({&peer});
  if (peer.rkey != nullptr) ucp_rkey_destroy(peer.rkey);
  if (peer.endpoint != nullptr) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;  // outstanding reads complete, cancelled
    void* request = ucp_ep_close_nbx(peer.endpoint, &p);
    if (UCS_PTR_IS_PTR(request)) {
      while (ucp_request_check_status(request) == UCS_INPROGRESS) ucp_worker_progress(worker_);
      ucp_request_free(request);
    }
  }
  peers_.erase(it);
}

void UcxKvTransfer::OnRead(void* request, ucs_status_t status, void* transfer) {
  auto* t = static_cast<Transfer*>(transfer);
  if (status != UCS_OK && t->status.ok()) {
    t->status = absl::UnavailableError(absl::StrCat("reading KV pages from the prefill worker: ", ucs_status_string(status)));
  }
  --t->outstanding;
  ucp_request_free(request);
}

void UcxKvTransfer::Post(Transfer& t) {
  t.posted = true;
  // Every range is checked before an endpoint exists: a transfer refused here connects to no
  // one, so it leaves no connection half set up (see Drop).
  uint64_t peer_base = 0, peer_length = 0;
  if (!PoolSpan(t.key, peer_base, peer_length)) {
    t.status = absl::InvalidArgumentError("the prefill worker published no KV pool key");
    return;
  }
  for (const Range& r : t.ranges) {
    if (r.to + r.bytes > bytes_ || r.to + r.bytes < r.to) {
      t.status = absl::InvalidArgumentError("a KV transfer range runs past this worker's pool");
      return;
    }
    // The peer's page ids came over the wire: UCX does not hold a read to the registered region.
    if (r.from + r.bytes > peer_length || r.from + r.bytes < r.from) {
      t.status = absl::InvalidArgumentError(absl::StrCat("a KV transfer range [", r.from, ", +", r.bytes,
                                                         ") runs past the prefill worker's pool of ", peer_length,
                                                         " bytes"));
      return;
    }
  }
  absl::Status error;
  Peer* peer = Connect(t.peer, t.key, error);
  if (peer == nullptr) {
    t.status = error;
    return;
  }
  for (const Range& r : t.ranges) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = OnRead;
    p.user_data = &t;  // active_ keeps it until every read on it has ended
    void* request = ucp_get_nbx(peer->endpoint, pool_ + r.to, r.bytes, peer->base + r.from, peer->rkey, &p);
    if (UCS_PTR_IS_ERR(request)) {
      t.status = absl::UnavailableError(absl::StrCat("reading KV pages from the prefill worker: ",
                                                     ucs_status_string(UCS_PTR_STATUS(request))));
      return;
    }
    if (request != nullptr) ++t.outstanding;  // null: done at once, no callback
    t.bytes += r.bytes;
  }
}

void UcxKvTransfer::Run() {
  while (!stop_) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (!incoming_.empty()) {
        std::unique_ptr<Transfer> t = std::move(incoming_.front());
        incoming_.pop_front();
        const uint64_t ticket = t->ticket;
        active_[ticket] = std::move(t);
      }
    }
    for (auto& [ticket, t] : active_)
      if (!t->posted) Post(*t);
    const unsigned progressed = ucp_worker_progress(worker_);
    const auto now = Clock::now();
    // Peers that failed or let a read run past the timeout: close their endpoints, which
    // completes every read still on them.
    std::vector<std::string> dead;
    for (auto& [ticket, t] : active_) {
      auto peer = peers_.find(t->peer);
      if (peer == peers_.end() || t->outstanding == 0) continue;
      if (peer->second->failed) {
        if (t->status.ok()) t->status = absl::UnavailableError(absl::StrCat("the prefill worker's connection failed: ",
                                                                            ucs_status_string(peer->second->why)));
        dead.push_back(t->peer);
      } else if (now - t->started > timeout_) {
        if (t->status.ok()) t->status = absl::DeadlineExceededError(absl::StrCat(
                                "KV pages not read from the prefill worker within ", timeout_.count(), " ms"));
        dead.push_back(t->peer);
      }
    }
    // A failed peer is closed at once; one merely late may still be setting up (see Drop).
    for (const std::string& address : dead) {
      auto peer = peers_.find(address);
      Drop(address, peer != peers_.end() && peer->second->failed ? Close::kForce : Close::kFlushFirst);
    }
    std::vector<Done> finished;
    for (auto it = active_.begin(); it != active_.end();) {
      Transfer& t = *it->second;
      if (t.outstanding > 0) {
        ++it;
        continue;
      }
      finished.push_back(Done{t.ticket, t.status, t.bytes, std::chrono::duration<double>(now - t.started).count()});
      it = active_.erase(it);
    }
    if (!finished.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      done_.insert(done_.end(), finished.begin(), finished.end());
    }
    if (progressed == 0 && active_.empty()) Sleep();
  }
}

void UcxKvTransfer::Wake() {
  if (wake_fd_ < 0) return;
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = write(wake_fd_, &one, sizeof one);
}

void UcxKvTransfer::Sleep() {
  // Arming fails with BUSY while events are pending: then there is work at once.
  if (ucp_worker_arm(worker_) != UCS_OK) return;
  pollfd fds[2] = {{ucp_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  if (poll(fds, 2, 100) > 0 && (fds[1].revents & POLLIN)) {
    uint64_t count;
    [[maybe_unused]] const ssize_t n = read(wake_fd_, &count, sizeof count);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<KvTransfer>> CreateUcxKvTransfer(void* pool, size_t bytes, std::chrono::milliseconds timeout) {
  if (pool == nullptr || bytes == 0) return absl::FailedPreconditionError("KV transfer needs a host KV pool");
  auto t = std::make_unique<UcxKvTransfer>(static_cast<uint8_t*>(pool), bytes, timeout);
  if (absl::Status s = t->Init(); !s.ok()) return s;
  return t;
}

}  // namespace daedalus
