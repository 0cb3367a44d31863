#include "coordinator/cluster_service.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "coordinator/auth.h"
#include "coordinator/outcome.h"

namespace daedalus {

namespace {

using Clock = std::chrono::steady_clock;

// Messages to one worker, written by a thread of their own so that ClusterState never blocks
// on a slow stream.
class StreamLink final : public WorkerLink {
 public:
  explicit StreamLink(grpc::ServerReaderWriter<v1::CoordinatorMessage, v1::WorkerMessage>* stream)
      : stream_(stream), writer_([this] { WriteLoop(); }) {}
  ~StreamLink() override { Close(); }

  bool Send(const v1::CoordinatorMessage& message) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return false;
    queue_.push_back(message);
    cv_.notify_one();
    return true;
  }
  // Stops writing; after it returns the stream is not touched again.
  void Close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      cv_.notify_one();
    }
    if (writer_.joinable()) writer_.join();
  }

 private:
  void WriteLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return closed_ || !queue_.empty(); });
      if (closed_) return;
      v1::CoordinatorMessage m = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      const bool ok = stream_->Write(m);
      lock.lock();
      if (!ok) closed_ = true;
    }
  }

  grpc::ServerReaderWriter<v1::CoordinatorMessage, v1::WorkerMessage>* stream_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::CoordinatorMessage> queue_;
  bool closed_ = false;
  std::thread writer_;
};

}  // namespace

grpc::Status ClusterService::Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                                      v1::Assignment* assignment) {
  if (grpc::Status s = CheckClusterSecret(*context, cluster_secret_); !s.ok()) return s;
  auto registered = state_.Register(*request, Clock::now());
  if (!registered.ok()) return ToGrpc(registered.status());
  auto assigned =
      state_.WaitAssignment(request->role(), registered->generation, registered->rank, Clock::now() + register_timeout_);
  if (!assigned.ok()) return ToGrpc(assigned.status());
  *assignment = std::move(*assigned);
  return grpc::Status::OK;
}

grpc::Status ClusterService::Control(grpc::ServerContext* context,
                                     grpc::ServerReaderWriter<v1::CoordinatorMessage, v1::WorkerMessage>* stream) {
  if (grpc::Status s = CheckClusterSecret(*context, cluster_secret_); !s.ok()) return s;
  v1::WorkerMessage message;
  if (!stream->Read(&message) || !message.has_hello()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a control stream starts with Hello");
  }
  const int rank = message.hello().rank();
  const int64_t generation = message.hello().generation();
  const std::string role = message.hello().role();
  auto link = std::make_shared<StreamLink>(stream);
  if (absl::Status s = state_.Attach(role, rank, generation, link, Clock::now()); !s.ok()) {
    link->Close();
    return ToGrpc(s);
  }
  std::string why = "its control stream closed (the process exited or the connection broke)";
  while (stream->Read(&message)) {
    const auto now = Clock::now();
    if (message.has_events()) {
      state_.OnEvents(role, rank, generation, message.events(), now);
    } else if (message.has_heartbeat()) {
      state_.OnHeartbeat(role, rank, generation, message.heartbeat(), now);
    } else if (message.has_peers_lost()) {
      state_.OnPeersLost(role, rank, generation, message.peers_lost(), now);
    } else if (message.has_failure()) {
      why = absl::StrCat("it reported: ", message.failure().message());
      break;
    }
  }
  state_.Lose(role, rank, generation, why);
  context->TryCancel();
  link->Close();
  return grpc::Status::OK;
}

}  // namespace daedalus
