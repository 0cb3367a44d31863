#include "coordinator/auth.h"

namespace daedalus {

namespace {

bool Header(const grpc::ServerContext& context, const std::string& name, std::string& value) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(name);
  if (it == metadata.end()) return false;
  value.assign(it->second.data(), it->second.size());
  return true;
}

}  // namespace

bool SecretsEqual(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;  // the length is not the secret
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

grpc::Status CheckBearer(const grpc::ServerContext& context, const std::string& expected) {
  if (expected.empty()) return grpc::Status::OK;
  std::string value;
  if (!Header(context, "authorization", value)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "this cluster needs a bearer token: \"authorization: Bearer <token>\"");
  }
  const std::string prefix = "Bearer ";
  if (value.rfind(prefix, 0) != 0 || !SecretsEqual(value.substr(prefix.size()), expected)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the bearer token is not valid");
  }
  return grpc::Status::OK;
}

grpc::Status CheckClusterSecret(const grpc::ServerContext& context, const std::string& expected) {
  if (expected.empty()) return grpc::Status::OK;
  std::string value;
  if (!Header(context, kClusterSecretHeader, value) || !SecretsEqual(value, expected)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong or missing cluster secret: workers must present --cluster-secret");
  }
  return grpc::Status::OK;
}

}  // namespace daedalus
