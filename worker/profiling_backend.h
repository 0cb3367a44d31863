// A Backend that runs every op on another and adds up the wall time each kind of op takes:
// where a forward step's time goes (`bench --profile`). It waits for a device backend after
// each op (Backend::Wait), so an op's time is its run, not its launch; that costs a device
// its overlap of launches with work, so profiled steps run slower there than unprofiled ones.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "worker/backend.h"

namespace daedalus {

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(Backend& inner) : inner_(inner) {}

  struct OpTime {
    std::string op;  // "Linear", "MlaAbsorbed", ... as the Backend method is named
    double seconds = 0;
    int64_t calls = 0;
  };
  // Every kind of op called since the last Take, with its total time; the totals restart.
  std::vector<OpTime> Take();

  absl::Status Begin(const ForwardBatch& batch, const std::vector<bool>& absorbed) override;
  absl::StatusOr<void*> Reserve(Buffer which, size_t bytes) override { return inner_.Reserve(which, bytes); }
  absl::StatusOr<const void*> ToHost(Buffer which, size_t bytes) override;
  absl::Status Upload(Buffer which, const void* host, size_t bytes) override;
  absl::Status Wait() override { return inner_.Wait(); }
  absl::Status Embed(const WeightView& table, float* out) override;
  absl::Status RmsNorm(const RmsNormOp& op) override;
  absl::Status Add(float* y, const float* x, int64_t n) override;
  absl::Status Linear(const LinearOp* ops, int64_t n) override;
  absl::Status Rope(const RopeOp& op) override;
  absl::Status KvWrite(int64_t layer, const float* latent) override;
  absl::Status MlaNaive(const MlaOp& op) override;
  absl::Status MlaAbsorbed(const MlaOp& op) override;
  absl::Status Route(const RouteOp& op) override;
  absl::Status Mlp(const MlpOp& op) override;
  absl::Status LocalExperts(const LocalExpertsOp& op) override;
  absl::Status ExpertRows(const ExpertRowsOp& op) override;
  absl::Status Combine(const CombineOp& op) override;
  absl::Status LogitRows(const float* x, float* y) override;
  absl::Status Logits(const float* hidden, const std::vector<float>& norm, const WeightView& lm_head,
                      float* logits) override;

 private:
  enum Op { kBegin, kToHost, kUpload, kEmbed, kRmsNorm, kAdd, kLinear, kRope, kKvWrite, kMlaNaive, kMlaAbsorbed,
            kRoute, kMlp, kLocalExperts, kExpertRows, kCombine, kLogitRows, kLogits, kOps };
  template <typename F>
  auto Timed(Op op, F&& run);

  Backend& inner_;
  std::array<double, kOps> seconds_{};
  std::array<int64_t, kOps> calls_{};
};

}  // namespace daedalus
