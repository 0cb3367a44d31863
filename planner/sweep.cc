#include "planner/sweep.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/status.h"

namespace daedalus {
namespace {

absl::Status Bad(const Setting& s, const std::string& expected) {
  return absl::InvalidArgumentError(absl::StrCat(s.first, "=", s.second, ": expected ", expected));
}

absl::Status Int(const Setting& s, int64_t min, int64_t& out) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(s.second, &v) || v < min) return Bad(s, absl::StrCat("an integer >= ", min));
  out = v;
  return absl::OkStatus();
}

absl::Status Real(const Setting& s, double& out) {
  double v = 0;
  if (!absl::SimpleAtod(s.second, &v)) return Bad(s, "a number");
  out = v;
  return absl::OkStatus();
}

}  // namespace

const std::vector<std::string>& SettingNames() {
  static const std::vector<std::string> names = {"phase",         "nodes",        "ep",
                                                 "redundant-experts", "batch-per-gpu", "avg-context",
                                                 "prompt-len",    "micro-batches", "weight-dtype",
                                                 "kv-dtype",      "cache-hit-rate", "synthetic-skew",
                                                 "mtp-acceptance", "prefill-nodes", "decode-nodes",
                                                 "output-len",    "prefill-batch-per-gpu"};
  return names;
}

absl::StatusOr<SweepAxis> ParseSweepAxis(const std::string& spec) {
  const size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
    return absl::InvalidArgumentError(absl::StrCat("--sweep ", spec, ": expected NAME=V1,V2,..."));
  }
  SweepAxis axis;
  axis.name = spec.substr(0, eq);
  const auto& names = SettingNames();
  if (std::find(names.begin(), names.end(), axis.name) == names.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--sweep ", spec, ": unknown setting \"", axis.name, "\"; one of ", absl::StrJoin(names, ", ")));
  }
  for (absl::string_view v : absl::StrSplit(spec.substr(eq + 1), ',')) {
    if (v.empty()) return absl::InvalidArgumentError(absl::StrCat("--sweep ", spec, ": empty value"));
    axis.values.emplace_back(v);
  }
  return axis;
}

absl::Status ApplySetting(const Setting& s, Workload& w) {
  const std::string& name = s.first;
  if (name == "phase") {
    ASSIGN_OR_RETURN(w.phase, ParsePhase(s.second));
    return absl::OkStatus();
  }
  if (name == "nodes") return Int(s, 1, w.nodes);
  if (name == "ep") return Int(s, 1, w.ep);
  if (name == "redundant-experts") return Int(s, 0, w.redundant_experts);
  if (name == "batch-per-gpu") return Int(s, 1, w.batch_per_device);
  if (name == "avg-context") return Int(s, 1, w.avg_context);
  if (name == "prompt-len") return Int(s, 1, w.prompt_len);
  if (name == "micro-batches") {
    RETURN_IF_ERROR(Int(s, 1, w.micro_batches));
    return w.micro_batches <= 2 ? absl::OkStatus() : Bad(s, "1 or 2");
  }
  if (name == "weight-dtype" || name == "kv-dtype") {
    absl::StatusOr<DType> d = ParsePlanDType(s.second);
    if (!d.ok()) return Bad(s, "bf16 or fp8");
    (name == "weight-dtype" ? w.weight_dtype : w.kv_dtype) = *d;
    return absl::OkStatus();
  }
  if (name == "cache-hit-rate") {
    RETURN_IF_ERROR(Real(s, w.cache_hit_rate));
    return w.cache_hit_rate >= 0 && w.cache_hit_rate < 1 ? absl::OkStatus() : Bad(s, "a number in [0, 1)");
  }
  if (name == "mtp-acceptance") {
    RETURN_IF_ERROR(Real(s, w.mtp_acceptance));
    return w.mtp_acceptance >= 0 && w.mtp_acceptance <= 1 ? absl::OkStatus() : Bad(s, "a number in [0, 1]");
  }
  if (name == "prefill-nodes") return Int(s, 1, w.prefill_nodes);
  if (name == "decode-nodes") return Int(s, 1, w.decode_nodes);
  if (name == "output-len") return Int(s, 1, w.output_len);
  if (name == "prefill-batch-per-gpu") return Int(s, 1, w.prefill_batch_per_device);
  if (name == "synthetic-skew") {
    RETURN_IF_ERROR(Real(s, w.synthetic_skew));
    return w.synthetic_skew >= 0 ? absl::OkStatus() : Bad(s, "a number >= 0");
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown setting \"", name, "\""));
}

absl::StatusOr<Workload> ApplySettings(const std::vector<Setting>& settings, Workload w) {
  for (const Setting& s : settings) RETURN_IF_ERROR(ApplySetting(s, w));
  return w;
}

std::vector<Setting> DeploymentSettings(const DeploymentDefaults& d) {
  std::vector<Setting> s;
  auto add = [&](const char* name, const auto& value) {
    if (value) s.emplace_back(name, absl::StrCat(*value));
  };
  add("phase", d.phase);
  add("nodes", d.nodes);
  add("ep", d.ep);
  add("redundant-experts", d.redundant_experts);
  add("batch-per-gpu", d.batch_per_gpu);
  add("avg-context", d.avg_context);
  add("prompt-len", d.prompt_len);
  add("micro-batches", d.micro_batches);
  add("weight-dtype", d.weight_dtype);
  add("kv-dtype", d.kv_dtype);
  add("cache-hit-rate", d.cache_hit_rate);
  add("synthetic-skew", d.synthetic_skew);
  add("prefill-nodes", d.prefill_nodes);
  add("decode-nodes", d.decode_nodes);
  add("output-len", d.output_len);
  add("prefill-batch-per-gpu", d.prefill_batch_per_gpu);
  return s;
}

std::vector<std::vector<Setting>> ExpandSweep(const std::vector<SweepAxis>& axes) {
  std::vector<std::vector<Setting>> out = {{}};
  for (const SweepAxis& axis : axes) {
    std::vector<std::vector<Setting>> next;
    for (const auto& prefix : out) {
      for (const std::string& v : axis.values) {
        next.push_back(prefix);
        next.back().emplace_back(axis.name, v);
      }
    }
    out = std::move(next);
  }
  return out;
}

}  // namespace daedalus
