// The worker's end of the coordinator link: Register (unary), then one Control stream.
// Messages from the coordinator are read by a thread of their own and queued.
// One ControlClient per formation of the cluster: a worker that registers again makes a new one.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "core/message_queue.h"
#include "proto/channel.h"
#include "proto/cluster.grpc.pb.h"
#include "worker/control_stream.h"

namespace daedalus {

class ControlClient final : public ControlStream {
 public:
  // `cluster_secret`: sent with every call when not empty.
  static absl::StatusOr<std::unique_ptr<ControlClient>> Connect(const ChannelOptions& channel, std::string cluster_secret);
  ~ControlClient() override;

  // Registers and waits (up to `timeout`, also for the coordinator to come up) for the
  // assignment, which arrives once every rank of the launch has registered.
  absl::StatusOr<v1::Assignment> Register(const v1::RegisterRequest& request, std::chrono::milliseconds timeout);
  // Called on the reader thread for every Reform after a loss (not a join), once it is queued,
  // with its generation: the worker interrupts the collective its step loop may be stuck in.
  // Set before Open.
  void OnReform(std::function<void(int64_t generation)> callback) { on_reform_ = std::move(callback); }
  // Opens the control stream and says Hello.
  absl::Status Open(int rank, int64_t generation, const std::string& role = "");
  bool Send(const v1::WorkerMessage& message) override;
  std::optional<v1::CoordinatorMessage> Next(std::chrono::milliseconds wait) override;
  bool closed() const override;
  std::string close_reason() const override;
  // Fault injection for the tests: cuts the control stream as a broken connection would,
  // leaving the process running.
  void Drop();

 private:
  ControlClient() = default;
  void ReadLoop();

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Cluster::Stub> stub_;
  std::string cluster_secret_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerMessage, v1::CoordinatorMessage>> stream_;
  std::mutex write_mu_;
  MessageQueue<v1::CoordinatorMessage> inbox_;  // filled by the reader thread
  std::function<void(int64_t)> on_reform_;
  std::thread reader_;
};

}  // namespace daedalus
