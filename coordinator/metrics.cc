#include "coordinator/metrics.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace daedalus {

namespace {

double BucketBound(int i) { return 0.001 * std::ldexp(1.0, i); }

}  // namespace

void Histogram::Observe(double seconds) {
  int i = 0;
  while (i < kBuckets && seconds > BucketBound(i)) ++i;
  if (i < kBuckets) ++counts_[i];
  ++count_;
  sum_ += seconds;
}

void Histogram::Render(const std::string& name, const std::string& help, std::string& out) const {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
  int64_t cumulative = 0;
  for (int i = 0; i < kBuckets; ++i) {
    cumulative += counts_[i];
    absl::StrAppend(&out, name, "_bucket{le=\"", absl::StrFormat("%g", BucketBound(i)), "\"} ", cumulative, "\n");
  }
  absl::StrAppend(&out, name, "_bucket{le=\"+Inf\"} ", count_, "\n", name, "_sum ", absl::StrFormat("%.6f", sum_), "\n",
                  name, "_count ", count_, "\n");
}

void Metrics::CountRequest(const std::string& outcome) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[outcome];
}

void Metrics::AddGeneratedTokens(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  generated_tokens_ += n;
}

void Metrics::ObserveTtft(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.Observe(seconds);
}

void Metrics::ObserveItl(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  itl_.Observe(seconds);
}

void Metrics::CountAdmission(const std::string& role) {
  std::lock_guard<std::mutex> lock(mu_);
  ++admissions_by_role_[role];
}

void Metrics::ObserveKvTransfer(bool ok, int64_t bytes, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ++kv_transfers_[ok ? "ok" : "failed"];
  if (!ok) return;
  kv_transfer_bytes_ += bytes;
  kv_transfer_seconds_.Observe(seconds);
}

int64_t Metrics::kv_transfer_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kv_transfer_bytes_;
}

std::map<std::string, int64_t> Metrics::requests_by_outcome() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t Metrics::generated_tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generated_tokens_;
}

std::string Metrics::Render(const v1::ClusterStatusResponse& status) const {
  std::string out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out += "# HELP daedalus_requests_total Generate calls by outcome.\n# TYPE daedalus_requests_total counter\n";
    for (const auto& [outcome, n] : requests_) absl::StrAppend(&out, "daedalus_requests_total{outcome=\"", outcome, "\"} ", n, "\n");
    absl::StrAppend(&out, "# HELP daedalus_generated_tokens_total Tokens streamed to clients.\n",
                    "# TYPE daedalus_generated_tokens_total counter\ndaedalus_generated_tokens_total ", generated_tokens_,
                    "\n");
    ttft_.Render("daedalus_time_to_first_token_seconds", "From the call's arrival to its first token.", out);
    itl_.Render("daedalus_inter_token_latency_seconds", "Between consecutive tokens of one sequence.", out);
    if (!admissions_by_role_.empty()) {  // prefill/decode disaggregation
      out += "# HELP daedalus_admissions_by_role_total Sequences admitted to prefill and to decode workers.\n"
             "# TYPE daedalus_admissions_by_role_total counter\n";
      for (const auto& [role, n] : admissions_by_role_)
        absl::StrAppend(&out, "daedalus_admissions_by_role_total{role=\"", role, "\"} ", n, "\n");
      absl::StrAppend(&out, "# HELP daedalus_kv_transfer_bytes_total Latent cache bytes decode workers read from prefill workers.\n",
                      "# TYPE daedalus_kv_transfer_bytes_total counter\ndaedalus_kv_transfer_bytes_total ", kv_transfer_bytes_, "\n");
      out += "# HELP daedalus_kv_transfers_total Reads of a handed-off sequence's pages, by result (a failed one is computed again).\n"
             "# TYPE daedalus_kv_transfers_total counter\n";
      for (const auto& [result, n] : kv_transfers_)
        absl::StrAppend(&out, "daedalus_kv_transfers_total{result=\"", result, "\"} ", n, "\n");
      kv_transfer_seconds_.Render("daedalus_kv_transfer_seconds", "One sequence's pages read from its prefill worker.", out);
    }
  }
  absl::StrAppend(&out, "# HELP daedalus_cluster_serving 1 when the cluster accepts requests.\n",
                  "# TYPE daedalus_cluster_serving gauge\ndaedalus_cluster_serving ", status.state() == "serving" ? 1 : 0,
                  "\n# HELP daedalus_queued_requests Requests waiting for admission.\n",
                  "# TYPE daedalus_queued_requests gauge\ndaedalus_queued_requests ", status.queued(), "\n");
  out += "# HELP daedalus_kv_used_tokens KV cache tokens reserved by admitted sequences, per worker.\n"
         "# TYPE daedalus_kv_used_tokens gauge\n";
  // A worker's labels: its rank, and with prefill/decode disaggregation its role (ranks number each group).
  auto labels = [](const v1::WorkerStatus& w) {
    return absl::StrCat("rank=\"", w.rank(), "\"", w.role().empty() || w.role() == "mixed" ? "" : absl::StrCat(",role=\"", w.role(), "\""));
  };
  for (const auto& w : status.workers()) absl::StrAppend(&out, "daedalus_kv_used_tokens{", labels(w), "} ", w.kv_used_tokens(), "\n");
  out += "# HELP daedalus_kv_capacity_tokens KV cache capacity per worker.\n# TYPE daedalus_kv_capacity_tokens gauge\n";
  for (const auto& w : status.workers())
    absl::StrAppend(&out, "daedalus_kv_capacity_tokens{", labels(w), "} ", w.kv_capacity_tokens(), "\n");
  out += "# HELP daedalus_worker_up 1 while a worker is registered and heard from.\n# TYPE daedalus_worker_up gauge\n";
  for (const auto& w : status.workers())
    absl::StrAppend(&out, "daedalus_worker_up{", labels(w), "} ", w.state() == "ready" ? 1 : 0, "\n");
  auto per_worker = [&](const char* name, const char* type, const char* help, auto value) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
    for (const auto& w : status.workers()) absl::StrAppend(&out, name, "{", labels(w), "} ", value(w), "\n");
  };
  per_worker("daedalus_prompt_tokens_total", "counter", "Prompt tokens admitted, per worker.",
             [](const v1::WorkerStatus& w) { return w.prompt_tokens(); });
  per_worker("daedalus_prompt_tokens_cached_total", "counter",
             "Prompt tokens whose latents came from the worker's prefix cache, per worker.",
             [](const v1::WorkerStatus& w) { return w.prompt_tokens_cached(); });
  per_worker("daedalus_kv_cached_pages", "gauge", "Full KV pages held by the prefix cache, per worker.",
             [](const v1::WorkerStatus& w) { return w.cached_pages(); });
  per_worker("daedalus_kv_evictions_total", "counter", "Cached KV pages reclaimed for new content, per worker.",
             [](const v1::WorkerStatus& w) { return w.kv_evictions(); });
  per_worker("daedalus_prefix_routed_total", "counter", "Requests sent to a worker because it held their longest cached prefix.",
             [](const v1::WorkerStatus& w) { return w.prefix_routed(); });
  per_worker("daedalus_preemptions_total", "counter", "Sequences preempted when a worker's KV pool ran out.",
             [](const v1::WorkerStatus& w) { return w.preemptions(); });
  per_worker("daedalus_running_sequences", "gauge", "Sequences admitted to a worker and not finished.",
             [](const v1::WorkerStatus& w) { return w.running(); });
  out += "# HELP daedalus_expert_tokens_total Routed (token, slot) pairs per MoE layer and expert.\n"
         "# TYPE daedalus_expert_tokens_total counter\n";
  for (const auto& layer : status.layers())
    for (int e = 0; e < layer.expert_tokens_size(); ++e)
      absl::StrAppend(&out, "daedalus_expert_tokens_total{layer=\"", layer.layer(), "\",expert=\"", e, "\"} ",
                      layer.expert_tokens(e), "\n");
  return out;
}

}  // namespace daedalus
