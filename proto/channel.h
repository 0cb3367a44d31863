// Opening a channel to a coordinator, for workers and clients: plaintext, or TLS verified
// against a CA certificate.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"

namespace daedalus {

struct ChannelOptions {
  std::string address;          // host:port
  std::string tls_ca;           // PEM file of the CA that signed the coordinator's certificate; empty: plaintext
  std::string tls_server_name;  // the name to verify instead of the address's host (e.g. a certificate's CN)
};

absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const ChannelOptions& options);

}  // namespace daedalus
