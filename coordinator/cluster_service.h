// The worker-facing API (proto/cluster.proto) over the Cluster.
#pragma once

#include <string>

#include "coordinator/cluster.h"
#include "proto/cluster.grpc.pb.h"

namespace daedalus {

class ClusterService final : public v1::Cluster::Service {
 public:
  // `cluster_secret`: empty for none. `register_timeout`: how long Register waits for the
  // other ranks of its launch.
  ClusterService(Cluster& state, std::string cluster_secret, std::chrono::milliseconds register_timeout)
      : state_(state), cluster_secret_(std::move(cluster_secret)), register_timeout_(register_timeout) {}

  grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                        v1::Assignment* assignment) override;
  grpc::Status Control(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<v1::CoordinatorMessage, v1::WorkerMessage>* stream) override;

 private:
  Cluster& state_;
  const std::string cluster_secret_;
  const std::chrono::milliseconds register_timeout_;
};

}  // namespace daedalus
