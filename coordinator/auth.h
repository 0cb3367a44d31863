// Shared secrets carried as gRPC metadata: the clients' bearer token ("authorization:
// Bearer <token>") and the workers' cluster secret ("x-daedalus-cluster-secret"). An empty
// expected value turns the check off.
#pragma once

#include <string>

#include "grpcpp/server_context.h"

namespace daedalus {

inline constexpr char kClusterSecretHeader[] = "x-daedalus-cluster-secret";

// Compares in time independent of where the strings differ.
bool SecretsEqual(const std::string& a, const std::string& b);
// UNAUTHENTICATED unless the call carries `expected` as a bearer token.
grpc::Status CheckBearer(const grpc::ServerContext& context, const std::string& expected);
// UNAUTHENTICATED unless the call carries the cluster secret.
grpc::Status CheckClusterSecret(const grpc::ServerContext& context, const std::string& expected);

}  // namespace daedalus
