// Coordinator flags shared by `coordinator` and `serve`.
#pragma once

#include <string>

#include "CLI/CLI.hpp"
#include "coordinator/server.h"
#include "routing/expert_load.h"

namespace daedalus {

struct CoordinatorFlags {
  std::string listen = "127.0.0.1:50051", metrics_listen, http_listen, tls_cert, tls_key, auth_token, cluster_secret, placement_from;
  int64_t max_queue = 1024;
  double queue_timeout_s = 30, heartbeat_interval_s = 1, heartbeat_timeout_s = 5, stall_timeout_s = 60,
         rebalance_interval_s = 0;
  int redundant_experts = 0, ranks_per_node = 0;
  int64_t prefix_route_slack = 8;

  void Register(CLI::App& app) {
    app.add_option("--listen", listen, "gRPC address (host:port; port 0 picks one)");
    app.add_option("--metrics-listen", metrics_listen, "HTTP address for Prometheus /metrics and /health (default: off)");
    app.add_option("--http", http_listen,
                   "HTTP address for the OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/models; "
                   "also /metrics and /health)");
    app.add_option("--tls-cert", tls_cert, "PEM certificate: serve gRPC over TLS (with --tls-key)");
    app.add_option("--tls-key", tls_key, "PEM private key of --tls-cert");
    app.add_option("--auth-token", auth_token, "bearer token clients must send")->envname("DAEDALUS_AUTH_TOKEN");
    app.add_option("--cluster-secret", cluster_secret, "secret workers must present to register")
        ->envname("DAEDALUS_CLUSTER_SECRET");
    app.add_option("--max-queue", max_queue, "requests that may wait for admission; more get RESOURCE_EXHAUSTED");
    app.add_option("--queue-timeout", queue_timeout_s, "seconds a request may wait for admission (default per request)");
    app.add_option("--heartbeat-interval", heartbeat_interval_s, "seconds between worker heartbeats");
    app.add_option("--heartbeat-timeout", heartbeat_timeout_s, "seconds of silence after which a worker is lost");
    app.add_option("--stall-timeout", stall_timeout_s,
                   "seconds a worker with sequences to run may go without finishing a step before it is lost, "
                   "heartbeats or not (longer than the longest step; 0: off)");
    app.add_option("--redundant-experts", redundant_experts, "extra replicas of hot routed experts over the workers");
    app.add_option("--ranks-per-node", ranks_per_node, "workers per node, for node-level expert placement");
    app.add_option("--prefix-route-slack", prefix_route_slack,
                   "a request goes to the worker holding the longest cached prefix of its prompt unless that worker "
                   "runs this many sequences more than the least busy one (then: the most free KV)");
    app.add_option("--placement-from", placement_from, "place experts by the load in this --expert-load-out file");
    app.add_option("--rebalance-interval", rebalance_interval_s,
                   "seconds between attempts to place the experts again from the measured load (0: never); a new "
                   "placement is applied by every worker at one step boundary");
  }

  absl::Status Options(const ModelConfig& config, int world_size, CoordinatorOptions& c, ServerOptions& s) const {
    c.world_size = world_size;
    c.max_queue = max_queue;
    c.queue_timeout = std::chrono::milliseconds(static_cast<int64_t>(queue_timeout_s * 1000));
    c.heartbeat_interval = std::chrono::milliseconds(static_cast<int64_t>(heartbeat_interval_s * 1000));
    c.heartbeat_timeout = std::chrono::milliseconds(static_cast<int64_t>(heartbeat_timeout_s * 1000));
    c.stall_timeout = std::chrono::milliseconds(static_cast<int64_t>(stall_timeout_s * 1000));
    c.redundant_experts = redundant_experts;
    c.ranks_per_node = ranks_per_node;
    c.prefix_route_slack = prefix_route_slack;
    c.rebalance_interval = std::chrono::milliseconds(static_cast<int64_t>(rebalance_interval_s * 1000));
    if (!placement_from.empty()) {
      auto load = ReadExpertLoad(placement_from, config.num_hidden_layers, config.n_routed_experts);
      if (!load.ok()) return load.status();
      c.placement_load = std::move(*load);
    }
    if (prefix_route_slack < 1) return absl::InvalidArgumentError("--prefix-route-slack must be at least 1");
    if (c.heartbeat_timeout <= c.heartbeat_interval) {
      return absl::InvalidArgumentError("--heartbeat-timeout must be longer than --heartbeat-interval");
    }
    if (stall_timeout_s < 0 || (c.stall_timeout.count() > 0 && c.stall_timeout <= c.heartbeat_interval)) {
      return absl::InvalidArgumentError("--stall-timeout must be 0 (off) or longer than --heartbeat-interval");
    }
    s.listen = listen;
    s.metrics_listen = metrics_listen;
    s.http_listen = http_listen;
    s.tls_cert = tls_cert;
    s.tls_key = tls_key;
    s.bearer_token = auth_token;
    s.cluster_secret = cluster_secret;
    return absl::OkStatus();
  }
};

}  // namespace daedalus
