// The coordinator's metrics, rendered in the Prometheus text format for /metrics: requests by
// outcome, generated tokens, time-to-first-token and inter-token latency histograms; gauges
// (KV usage per worker, tokens per expert) come from a ClusterStatus snapshot at render time.
// Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "proto/serving.pb.h"

namespace daedalus {

class Histogram {
 public:
  // Upper bounds in seconds: 1 ms to about 33 s, doubling.
  static constexpr int kBuckets = 16;
  void Observe(double seconds);
  // Appends the _bucket, _sum and _count series of `name`.
  void Render(const std::string& name, const std::string& help, std::string& out) const;
  int64_t count() const { return count_; }

 private:
  std::array<int64_t, kBuckets> counts_{};  // not cumulative
  int64_t count_ = 0;
  double sum_ = 0;
};

class Metrics {
 public:
  // outcome: "ok", "cancelled", "invalid_argument", "resource_exhausted", "unavailable",
  // "unauthenticated", "internal".
  void CountRequest(const std::string& outcome);
  void AddGeneratedTokens(int64_t n);
  void ObserveTtft(double seconds);
  void ObserveItl(double seconds);
  // Prefill/decode disaggregation: a sequence admitted to a worker of `role` ("prefill" |
  // "decode"; mixed workers are not counted), and a read of a handed-off sequence's pages.
  void CountAdmission(const std::string& role);
  void ObserveKvTransfer(bool ok, int64_t bytes, double seconds);
  int64_t kv_transfer_bytes() const;

  std::map<std::string, int64_t> requests_by_outcome() const;
  int64_t generated_tokens() const;
  std::string Render(const v1::ClusterStatusResponse& status) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, int64_t> requests_;
  int64_t generated_tokens_ = 0;
  Histogram ttft_, itl_;
  std::map<std::string, int64_t> admissions_by_role_, kv_transfers_;  // by role; by "ok" | "failed"
  int64_t kv_transfer_bytes_ = 0;
  Histogram kv_transfer_seconds_;
};

}  // namespace daedalus
