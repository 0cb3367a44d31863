// What the client commands (`generate`, `status`, `loadgen`) share: the server flags, the
// channel, the bearer token, and turning a prompts-file request into a GenerateRequest.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "grpcpp/client_context.h"
#include "proto/channel.h"
#include "proto/serving.grpc.pb.h"
#include "worker/engine.h"

namespace daedalus {

struct ClientFlags {
  std::string server, auth_token, tls_ca, tls_server_name;

  void Register(CLI::App& app) {
    app.add_option("--server", server, "the coordinator's host:port")->required();
    app.add_option("--auth-token", auth_token, "bearer token, when the cluster has one")->envname("DAEDALUS_AUTH_TOKEN");
    app.add_option("--tls-ca", tls_ca, "PEM of the CA that signed the coordinator's certificate (TLS)");
    app.add_option("--tls-server-name", tls_server_name, "name to verify in the coordinator's certificate");
  }
  absl::StatusOr<std::unique_ptr<v1::Serving::Stub>> Stub() const {
    auto channel = OpenChannel({server, tls_ca, tls_server_name});
    if (!channel.ok()) return channel.status();
    return v1::Serving::NewStub(*channel);
  }
  // Adds the bearer token, and a deadline when `timeout_s` > 0.
  void Prepare(grpc::ClientContext& context, double timeout_s) const {
    if (!auth_token.empty()) context.AddMetadata("authorization", "Bearer " + auth_token);
    if (timeout_s > 0) {
      context.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)));
    }
  }
};

inline v1::GenerateRequest ToGenerateRequest(const Request& r) {
  v1::GenerateRequest g;
  g.set_id(r.id);
  *g.mutable_prompt_ids() = {r.prompt_ids.begin(), r.prompt_ids.end()};
  g.set_max_new_tokens(r.max_new_tokens);
  g.mutable_sampling()->set_temperature(r.sampling.temperature);
  g.mutable_sampling()->set_top_p(r.sampling.top_p);
  g.mutable_sampling()->set_top_k(r.sampling.top_k);
  g.mutable_sampling()->set_seed(r.sampling.seed);
  g.set_ignore_eos(!r.stop_at_eos);
  g.set_logprobs(r.logprobs);
  return g;
}

// "RESOURCE_EXHAUSTED" etc.
std::string StatusCodeName(grpc::StatusCode code);

}  // namespace daedalus
