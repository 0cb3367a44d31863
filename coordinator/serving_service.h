// The client API (proto/serving.proto) over a ClusterState.
#pragma once

#include <string>

#include "coordinator/cluster_state.h"
#include "proto/serving.grpc.pb.h"

namespace daedalus {

class ServingService final : public v1::Serving::Service {
 public:
  // `bearer_token`: empty for none.
  ServingService(ClusterState& state, Metrics& metrics, const ModelConfig& config, CoordinatorOptions options,
                 std::string bearer_token)
      : state_(state), metrics_(metrics), config_(config), options_(std::move(options)), bearer_token_(std::move(bearer_token)) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status ClusterStatus(grpc::ServerContext* context, const v1::ClusterStatusRequest* request,
                             v1::ClusterStatusResponse* response) override;

 private:
  ClusterState& state_;
  Metrics& metrics_;
  const ModelConfig& config_;
  const CoordinatorOptions options_;
  const std::string bearer_token_;
};

}  // namespace daedalus
