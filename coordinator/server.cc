#include "coordinator/server.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "coordinator/cluster_service.h"
#include "coordinator/openai_api.h"
#include "coordinator/serving_service.h"
#include "core/status.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "httplib.h"

namespace daedalus {

namespace {

// The largest request the coordinator reads, over gRPC or HTTP.
constexpr int kMaxRequestBytes = 64 << 20;

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::Status SplitHostPort(const std::string& address, std::string& host, int& port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("address \"", address, "\": expected host:port"));
  }
  host = address.substr(0, colon);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(const std::string& model_dir,
                                                                           CoordinatorOptions options,
                                                                           ServerOptions server) {
  auto self = std::unique_ptr<CoordinatorServer>(new CoordinatorServer());
  ASSIGN_OR_RETURN(self->config_, ModelConfig::Load((std::filesystem::path(model_dir) / "config.json").string()));
  const ModelConfig& c = self->config_;
  const bool disaggregated = options.prefill_world_size > 0 || options.decode_world_size > 0;
  if (!disaggregated && options.world_size < 1) return absl::InvalidArgumentError("the world size must be at least 1");
  // The placement of every later generation uses the same shape; check it once here.
  for (int world : disaggregated ? std::vector<int>{options.prefill_world_size, options.decode_world_size}
                                 : std::vector<int>{options.world_size}) {
    if (world < 1) break;  // Cluster::Create says what is wrong
    RETURN_IF_ERROR(PlaceLayers(options.placement_load, c.num_hidden_layers, c.n_routed_experts, c.n_group, world,
                                options.ranks_per_node, options.redundant_experts)
                        .status());
  }
  std::string name = std::filesystem::path(model_dir).filename().string();
  if (name.empty()) name = std::filesystem::path(model_dir).parent_path().filename().string();
  self->model_name_ = name;
  self->options_ = options;
  if (std::filesystem::exists(std::filesystem::path(model_dir) / "tokenizer.json")) {
    ASSIGN_OR_RETURN(self->tokenizer_, Tokenizer::Load(model_dir));
  }
  ASSIGN_OR_RETURN(self->state_, Cluster::Create(c, name, options, &self->metrics_));
  self->serving_ = std::make_unique<ServingService>(*self->state_, self->metrics_, self->config_, self->tokenizer_.get(),
                                                    options, server.bearer_token);
  self->cluster_ = std::make_unique<ClusterService>(*self->state_, server.cluster_secret, server.register_timeout);

  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!server.tls_cert.empty() || !server.tls_key.empty()) {
    if (server.tls_cert.empty() || server.tls_key.empty()) return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
    grpc::SslServerCredentialsOptions ssl;
    ASSIGN_OR_RETURN(std::string cert, ReadFile(server.tls_cert));
    ASSIGN_OR_RETURN(std::string key, ReadFile(server.tls_key));
    ssl.pem_key_cert_pairs.push_back({key, cert});
    credentials = grpc::SslServerCredentials(ssl);
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(server.listen, credentials, &port);
  builder.RegisterService(self->serving_.get());
  builder.RegisterService(self->cluster_.get());
  builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
  self->server_ = builder.BuildAndStart();
  if (self->server_ == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", server.listen, " (in use, or not a local address?)"));
  }
  std::string host;
  int unused;
  RETURN_IF_ERROR(SplitHostPort(server.listen, host, unused));
  self->address_ = absl::StrCat(host, ":", port);
  self->server_->GetHealthCheckService()->SetServingStatus("daedalus.v1.Serving", false);
  self->server_->GetHealthCheckService()->SetServingStatus("", false);

  if (!server.metrics_listen.empty()) {
    ASSIGN_OR_RETURN(self->metrics_address_, self->StartHttp(server.metrics_listen, /*api=*/false, server));
  }
  if (!server.http_listen.empty()) {
    ASSIGN_OR_RETURN(self->http_address_, self->StartHttp(server.http_listen, /*api=*/true, server));
  }
  self->monitor_ = std::thread([raw = self.get()] { raw->Monitor(); });
  return self;
}

absl::StatusOr<std::string> CoordinatorServer::StartHttp(const std::string& listen, bool api, const ServerOptions& server) {
  std::string host;
  int port;
  RETURN_IF_ERROR(SplitHostPort(listen, host, port));
  auto http = std::make_unique<httplib::Server>();
  // Streaming responses hold a thread each.
  http->new_task_queue = [] { return new httplib::ThreadPool(256); };
  // Bodies past gRPC's own limit are refused (413) before they are read whole: httplib's default
  // reads any length into memory, before a handler can check the bearer token.
  http->set_payload_max_length(kMaxRequestBytes);
  http->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.Render(state_->Status(std::chrono::steady_clock::now())), "text/plain; version=0.0.4");
  });
  http->Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const bool up = state_->serving();
    res.status = up ? 200 : 503;
    res.set_content(up ? "serving\n" : state_->state() + "\n", "text/plain");
  });
  if (api) {
    OpenAiApiOptions o;
    o.model_name = model_name_;
    o.bearer_token = server.bearer_token;
    o.queue_timeout = options_.queue_timeout;
    AddOpenAiRoutes(*http, *state_, metrics_, config_, tokenizer_.get(), o);
  }
  const int bound = port == 0 ? http->bind_to_any_port(host) : (http->bind_to_port(host, port) ? port : -1);
  if (bound <= 0) return absl::UnavailableError(absl::StrCat("cannot listen for HTTP on ", listen));
  httplib::Server* raw = http.get();
  http_threads_.emplace_back([raw] { raw->listen_after_bind(); });
  http_.push_back(std::move(http));
  return absl::StrCat(host, ":", bound);
}

void CoordinatorServer::Monitor() {
  bool was_serving = false;
  auto next_rebalance = std::chrono::steady_clock::now() + options_.rebalance_interval;
  while (!stopping_) {
    const auto now = std::chrono::steady_clock::now();
    state_->CheckDeadlines(now);
    if (options_.rebalance_interval.count() > 0 && now >= next_rebalance) {
      if (state_->Rebalance()) std::fprintf(stderr, "daedalus: new expert placement sent to the workers\n");
      next_rebalance = now + options_.rebalance_interval;
    }
    const bool serving = state_->serving();
    if (serving != was_serving) {
      server_->GetHealthCheckService()->SetServingStatus("daedalus.v1.Serving", serving);
      server_->GetHealthCheckService()->SetServingStatus("", serving);
      was_serving = serving;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void CoordinatorServer::Shutdown() {
  if (stopping_.exchange(true)) return;
  state_->ShutdownWorkers("the coordinator is shutting down");
  if (monitor_.joinable()) monitor_.join();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  for (auto& http : http_) http->stop();
  for (auto& t : http_threads_) t.join();
  http_threads_.clear();
}

CoordinatorServer::~CoordinatorServer() {
  if (server_) Shutdown();
}

}  // namespace daedalus
