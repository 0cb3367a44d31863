#include "worker/profiling_backend.h"

#include <chrono>

namespace daedalus {

namespace {
constexpr const char* kOpNames[] = {"Begin", "ToHost",   "Upload", "Embed", "RmsNorm", "Add",
                                    "Linear", "Rope",    "KvWrite", "MlaNaive", "MlaAbsorbed", "Route",
                                    "Mlp",   "LocalExperts", "ExpertRows", "Combine", "LogitRows", "Logits"};
}  // namespace

template <typename F>
auto ProfilingBackend::Timed(Op op, F&& run) {
  const auto start = std::chrono::steady_clock::now();
  auto result = run();
  if (result.ok()) {
    if (const absl::Status waited = inner_.Wait(); !waited.ok()) return decltype(result)(waited);
  }
  seconds_[op] += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++calls_[op];
  return result;
}

std::vector<ProfilingBackend::OpTime> ProfilingBackend::Take() {
  static_assert(sizeof(kOpNames) / sizeof(kOpNames[0]) == kOps);
  std::vector<OpTime> times;
  for (int op = 0; op < kOps; ++op)
    if (calls_[op] > 0) times.push_back({kOpNames[op], seconds_[op], calls_[op]});
  seconds_.fill(0);
  calls_.fill(0);
  return times;
}

absl::Status ProfilingBackend::Begin(const ForwardBatch& batch, const std::vector<bool>& absorbed) {
  return Timed(kBegin, [&] { return inner_.Begin(batch, absorbed); });
}
absl::StatusOr<const void*> ProfilingBackend::ToHost(Buffer which, size_t bytes) {
  return Timed(kToHost, [&] { return inner_.ToHost(which, bytes); });
}
absl::Status ProfilingBackend::Upload(Buffer which, const void* host, size_t bytes) {
  return Timed(kUpload, [&] { return inner_.Upload(which, host, bytes); });
}
absl::Status ProfilingBackend::Embed(const WeightView& table, float* out) {
  return Timed(kEmbed, [&] { return inner_.Embed(table, out); });
}
absl::Status ProfilingBackend::RmsNorm(const RmsNormOp& op) {
  return Timed(kRmsNorm, [&] { return inner_.RmsNorm(op); });
}
absl::Status ProfilingBackend::Add(float* y, const float* x, int64_t n) {
  return Timed(kAdd, [&] { return inner_.Add(y, x, n); });
}
absl::Status ProfilingBackend::Linear(const LinearOp* ops, int64_t n) {
  return Timed(kLinear, [&] { return inner_.Linear(ops, n); });
}
absl::Status ProfilingBackend::Rope(const RopeOp& op) {
  return Timed(kRope, [&] { return inner_.Rope(op); });
}
absl::Status ProfilingBackend::KvWrite(int64_t layer, const float* latent) {
  return Timed(kKvWrite, [&] { return inner_.KvWrite(layer, latent); });
}
absl::Status ProfilingBackend::MlaNaive(const MlaOp& op) {
  return Timed(kMlaNaive, [&] { return inner_.MlaNaive(op); });
}
absl::Status ProfilingBackend::MlaAbsorbed(const MlaOp& op) {
  return Timed(kMlaAbsorbed, [&] { return inner_.MlaAbsorbed(op); });
}
absl::Status ProfilingBackend::Route(const RouteOp& op) {
  return Timed(kRoute, [&] { return inner_.Route(op); });
}
absl::Status ProfilingBackend::Mlp(const MlpOp& op) {
  return Timed(kMlp, [&] { return inner_.Mlp(op); });
}
absl::Status ProfilingBackend::LocalExperts(const LocalExpertsOp& op) {
  return Timed(kLocalExperts, [&] { return inner_.LocalExperts(op); });
}
absl::Status ProfilingBackend::ExpertRows(const ExpertRowsOp& op) {
  return Timed(kExpertRows, [&] { return inner_.ExpertRows(op); });
}
absl::Status ProfilingBackend::Combine(const CombineOp& op) {
  return Timed(kCombine, [&] { return inner_.Combine(op); });
}
absl::Status ProfilingBackend::LogitRows(const float* x, float* y) {
  return Timed(kLogitRows, [&] { return inner_.LogitRows(x, y); });
}
absl::Status ProfilingBackend::Logits(const float* hidden, const std::vector<float>& norm, const WeightView& lm_head,
                                      float* logits) {
  return Timed(kLogits, [&] { return inner_.Logits(hidden, norm, lm_head, logits); });
}

}  // namespace daedalus
