// The client API (proto/serving.proto) over the Cluster.
#pragma once

#include <string>

#include "coordinator/cluster.h"
#include "core/tokenizer.h"
#include "proto/serving.grpc.pb.h"

namespace daedalus {

// When a queued request must be admitted by: its queue timeout (or the default), and before
// the call's own deadline.
std::chrono::steady_clock::time_point AdmissionDeadline(const grpc::ServerContext& context, int64_t queue_timeout_ms,
                                                        std::chrono::milliseconds default_timeout,
                                                        std::chrono::steady_clock::time_point start);

class ServingService final : public v1::Serving::Service {
 public:
  // `bearer_token`: empty for none. `tokenizer`: null when the checkpoint has none.
  ServingService(Cluster& state, Metrics& metrics, const ModelConfig& config, const Tokenizer* tokenizer,
                 CoordinatorOptions options, std::string bearer_token)
      : state_(state), metrics_(metrics), config_(config), tokenizer_(tokenizer), options_(std::move(options)),
        bearer_token_(std::move(bearer_token)) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status ClusterStatus(grpc::ServerContext* context, const v1::ClusterStatusRequest* request,
                             v1::ClusterStatusResponse* response) override;

 private:
  Cluster& state_;
  Metrics& metrics_;
  const ModelConfig& config_;
  const Tokenizer* tokenizer_;
  const CoordinatorOptions options_;
  const std::string bearer_token_;
};

}  // namespace daedalus
