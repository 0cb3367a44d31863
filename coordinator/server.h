// A running coordinator: the gRPC server (Serving, Cluster, health checking, reflection),
// a monitor thread for heartbeats and admission deadlines, and the HTTP /metrics endpoint.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "coordinator/cluster.h"
#include "core/tokenizer.h"

namespace httplib {
class Server;
}
namespace grpc {
class Server;
class Service;
}

namespace daedalus {

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  // host:port; port 0 picks a free one
  std::string tls_cert, tls_key;           // PEM files, both or neither: TLS on the gRPC port
  std::string bearer_token;                // clients must send "authorization: Bearer <token>"; empty: none
  std::string cluster_secret;              // workers must present it to register; empty: none
  std::string metrics_listen;              // host:port of the HTTP /metrics and /health endpoints; empty: off
  std::string http_listen;                 // host:port of the OpenAI-compatible HTTP API (with /metrics); empty: off
  std::chrono::milliseconds register_timeout{600000};  // Register waits this long for the other ranks
};

class CoordinatorServer {
 public:
  // Reads `model_dir`/config.json (no tensors) and starts serving.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(const std::string& model_dir,
                                                                  CoordinatorOptions options, ServerOptions server);
  ~CoordinatorServer();

  const std::string& address() const { return address_; }  // host:port as bound
  const std::string& metrics_address() const { return metrics_address_; }
  const std::string& http_address() const { return http_address_; }
  Cluster& state() { return *state_; }
  // Tells the workers to stop, then stops serving (in-flight calls end).
  void Shutdown();

 private:
  CoordinatorServer() = default;
  void Monitor();
  // An HTTP server on `listen` with /metrics and /health, and the /v1 API when `api`.
  absl::StatusOr<std::string> StartHttp(const std::string& listen, bool api, const ServerOptions& server);

  ModelConfig config_;
  Metrics metrics_;
  std::unique_ptr<Cluster> state_;
  std::unique_ptr<grpc::Service> serving_, cluster_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Tokenizer> tokenizer_;  // null when the checkpoint has none
  std::vector<std::unique_ptr<httplib::Server>> http_;
  std::vector<std::thread> http_threads_;
  std::thread monitor_;
  std::atomic<bool> stopping_{false};
  std::string address_, metrics_address_, http_address_;
  std::string model_name_;
  CoordinatorOptions options_;
};

}  // namespace daedalus
