#include "worker/control_client.h"

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace daedalus {

namespace {

constexpr char kClusterSecretHeader[] = "x-daedalus-cluster-secret";

}  // namespace

absl::StatusOr<std::unique_ptr<ControlClient>> ControlClient::Connect(const ChannelOptions& channel,
                                                                     std::string cluster_secret) {
  auto client = std::unique_ptr<ControlClient>(new ControlClient());
  ASSIGN_OR_RETURN(client->channel_, OpenChannel(channel));
  client->stub_ = v1::Cluster::NewStub(client->channel_);
  client->cluster_secret_ = std::move(cluster_secret);
  return client;
}

ControlClient::~ControlClient() {
  if (context_) context_->TryCancel();
  if (reader_.joinable()) reader_.join();
}

absl::StatusOr<v1::Assignment> ControlClient::Register(const v1::RegisterRequest& request,
                                                       std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  context.set_wait_for_ready(true);  // the coordinator may still be starting
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  if (!cluster_secret_.empty()) context.AddMetadata(kClusterSecretHeader, cluster_secret_);
  v1::Assignment assignment;
  grpc::Status s = stub_->Register(&context, request, &assignment);
  if (!s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                        absl::StrCat("registering with the coordinator: ", s.error_message()));
  }
  return assignment;
}

absl::Status ControlClient::Open(int rank, int64_t generation, const std::string& role) {
  context_ = std::make_unique<grpc::ClientContext>();
  if (!cluster_secret_.empty()) context_->AddMetadata(kClusterSecretHeader, cluster_secret_);
  stream_ = stub_->Control(context_.get());
  v1::WorkerMessage hello;
  hello.mutable_hello()->set_rank(rank);
  hello.mutable_hello()->set_generation(generation);
  hello.mutable_hello()->set_role(role);
  if (!stream_->Write(hello)) return absl::UnavailableError("the coordinator closed the control stream at once");
  reader_ = std::thread([this] { ReadLoop(); });
  return absl::OkStatus();
}

void ControlClient::ReadLoop() {
  v1::CoordinatorMessage message;
  while (stream_->Read(&message)) {
    const int64_t reform = message.has_reform() && !message.reform().join() ? message.reform().generation() : 0;
    inbox_.Push(std::move(message));
    if (reform > 0 && on_reform_) on_reform_(reform);  // after queueing: the step loop finds it
  }
  // Finish() may not run beside a Write of another thread, so the reason stays general.
  inbox_.Close("the coordinator closed the control stream (it stopped, or the connection broke)");
}

bool ControlClient::Send(const v1::WorkerMessage& message) {
  std::lock_guard<std::mutex> lock(write_mu_);
  return stream_ && stream_->Write(message);
}

std::optional<v1::CoordinatorMessage> ControlClient::Next(std::chrono::milliseconds wait) { return inbox_.Pop(wait); }

void ControlClient::Drop() {
  if (context_) context_->TryCancel();
}

bool ControlClient::closed() const { return inbox_.closed(); }

std::string ControlClient::close_reason() const { return inbox_.close_reason(); }

}  // namespace daedalus
