// `daedalus status`: the cluster's state, workers, KV usage and expert placement and load.
#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "google/protobuf/util/json_util.h"

namespace daedalus {

namespace {

void PrintTable(const v1::ClusterStatusResponse& s) {
  std::printf("cluster %s (%s), model %s, %d workers, %lld queued, %lld tokens generated; generation %lld%s\n",
              s.state().c_str(), s.detail().empty() ? "ok" : s.detail().c_str(), s.model().c_str(), s.world_size(),
              static_cast<long long>(s.queued()), static_cast<long long>(s.generated_tokens()),
              static_cast<long long>(s.generation()), s.elastic() ? ", elastic (ucx)" : "");
  std::printf("requests:");
  for (const auto& [outcome, n] : s.requests_by_outcome()) std::printf(" %s=%lld", outcome.c_str(), static_cast<long long>(n));
  std::printf("\n\n%-5s %-8s %-20s %-8s %-6s %-4s %18s %8s %10s %8s %7s %7s %15s\n", "rank", "state", "host", "pid", "device",
              "kv", "kv used/capacity", "running", "heartbeat", "hit", "cached", "routed", "step p50/max");
  for (const auto& w : s.workers()) {
    // Prefix cache: the share of prompt tokens read from cached pages, the full pages held, and
    // requests sent here for the prefix it held.
    const std::string hit = !w.prefix_caching() ? "off"
                            : w.prompt_tokens() == 0
                                ? "-"
                                : absl::StrFormat("%.1f%%", 100.0 * w.prompt_tokens_cached() / w.prompt_tokens());
    // Its steps over its last heartbeat interval, median and longest ("-": none ran).
    const std::string steps =
        w.step_ms_max() > 0 ? absl::StrFormat("%.1f/%.1f ms", w.step_ms_median(), w.step_ms_max()) : "-";
    // Prefill/decode disaggregation numbers each group: p0, p1, ... and d0, d1, ...
    const std::string rank = w.role().empty() || w.role() == "mixed" ? absl::StrCat(w.rank()) : absl::StrCat(w.role().substr(0, 1), w.rank());
    std::printf("%-5s %-8s %-20s %-8lld %-6s %-4s %8lld/%-9lld %8lld %9.1fs %8s %7lld %7lld %15s\n", rank.c_str(),
                w.state().c_str(), w.host().c_str(), static_cast<long long>(w.pid()), w.device().c_str(), w.kv_dtype().c_str(),
                static_cast<long long>(w.kv_used_tokens()), static_cast<long long>(w.kv_capacity_tokens()),
                static_cast<long long>(w.running()), w.last_heartbeat_age_s(), hit.c_str(),
                static_cast<long long>(w.cached_pages()), static_cast<long long>(w.prefix_routed()), steps.c_str());
  }
  if (s.layers_size() == 0) return;
  // Expert load: per MoE layer, the routed tokens each rank served (load split evenly over
  // replicas), and the hottest experts.
  std::printf("\nexpert load (routed token-slots) by rank, per MoE layer:\n%-6s", "layer");
  // With prefill/decode disaggregation: the decode group's ranks.
  const int ranks = s.layers(0).experts_on_size();
  for (int r = 0; r < ranks; ++r) std::printf(" %10s", absl::StrCat("rank ", r).c_str());
  std::printf("  %s\n", "hottest experts");
  for (const auto& layer : s.layers()) {
    std::vector<double> per_rank(ranks, 0);
    std::vector<int> copies(layer.expert_tokens_size(), 0);
    for (const auto& on : layer.experts_on())
      for (int e : on.experts()) ++copies[e];
    for (int r = 0; r < layer.experts_on_size() && r < ranks; ++r)
      for (int e : layer.experts_on(r).experts()) per_rank[r] += static_cast<double>(layer.expert_tokens(e)) / copies[e];
    std::printf("%-6d", layer.layer());
    for (double v : per_rank) std::printf(" %10.0f", v);
    std::vector<int> order(layer.expert_tokens_size());
    for (size_t e = 0; e < order.size(); ++e) order[e] = static_cast<int>(e);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return layer.expert_tokens(a) > layer.expert_tokens(b); });
    std::printf(" ");
    for (size_t i = 0; i < order.size() && i < 4; ++i) {
      std::printf(" e%d:%lld", order[i], static_cast<long long>(layer.expert_tokens(order[i])));
    }
    std::printf("\n");
  }
}

}  // namespace

Command AddStatusCommand(CLI::App& app) {
  struct Flags {
    ClientFlags client;
    bool json = false;
    double timeout_s = 10;
  };
  auto f = std::make_shared<Flags>();
  f->client.Register(app);
  app.add_flag("--json", f->json, "print the ClusterStatus message as JSON");
  app.add_option("--timeout", f->timeout_s, "seconds to wait for the answer");
  return [f]() {
    auto stub = f->client.Stub();
    if (!stub.ok()) return Fail(std::string(stub.status().message()));
    grpc::ClientContext context;
    f->client.Prepare(context, f->timeout_s);
    v1::ClusterStatusResponse response;
    grpc::Status s = (*stub)->ClusterStatus(&context, v1::ClusterStatusRequest{}, &response);
    if (!s.ok()) return Fail(absl::StrCat(StatusCodeName(s.error_code()), ": ", s.error_message()));
    if (f->json) {
      std::string json;
      google::protobuf::util::JsonPrintOptions options;
      options.always_print_primitive_fields = true;
      options.preserve_proto_field_names = true;
      (void)google::protobuf::util::MessageToJsonString(response, &json, options);
      std::printf("%s\n", json.c_str());
    } else {
      PrintTable(response);
    }
    return 0;
  };
}

}  // namespace daedalus
