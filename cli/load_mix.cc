#include "cli/load_mix.h"

#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace daedalus {

const char* LoadKindName(LoadKind kind) {
  switch (kind) {
    case LoadKind::kPlain: return "plain";
    case LoadKind::kCancel: return "cancel";
    case LoadKind::kDeadline: return "deadline";
    case LoadKind::kInvalid: return "invalid";
    case LoadKind::kOversized: return "oversized";
  }
  return "?";
}

absl::StatusOr<LoadMix> ParseLoadMix(const std::string& spec) {
  LoadMix mix;
  if (spec.empty()) return mix;
  for (absl::string_view part : absl::StrSplit(spec, ',')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(part, absl::MaxSplits('=', 1));
    double v = 0;
    if (!absl::SimpleAtod(kv.second, &v) || v < 0 || v > 1) {
      return absl::InvalidArgumentError(absl::StrCat("--mix: \"", std::string(part), "\": expected KIND=FRACTION in [0, 1]"));
    }
    if (kv.first == "cancel") mix.cancel = v;
    else if (kv.first == "deadline") mix.deadline = v;
    else if (kv.first == "invalid") mix.invalid = v;
    else if (kv.first == "oversized") mix.oversized = v;
    else return absl::InvalidArgumentError(absl::StrCat("--mix: unknown kind \"", kv.first, "\" (cancel, deadline, invalid, oversized)"));
  }
  if (mix.cancel + mix.deadline + mix.invalid + mix.oversized > 1) return absl::InvalidArgumentError("--mix: fractions sum over 1");
  return mix;
}

std::vector<std::vector<int32_t>> SharedPrefixes(int64_t count, int64_t length, int64_t vocab_size, uint64_t seed) {
  std::mt19937_64 rng(seed ^ 0x5bd1e995u);  // apart from the stream that draws the requests
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab_size - 1));
  std::vector<std::vector<int32_t>> prefixes(count);
  for (auto& prefix : prefixes)
    for (int64_t t = 0; t < length; ++t) prefix.push_back(token(rng));
  return prefixes;
}

PlannedRequest PlanRequest(const LoadMix& mix, const LoadShape& shape, std::mt19937_64& rng, const std::string& id) {
  PlannedRequest p;
  std::uniform_real_distribution<double> unit(0, 1);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(shape.vocab_size - 1));
  const double u = unit(rng);
  double at = mix.cancel;
  p.kind = u < at                        ? LoadKind::kCancel
           : u < (at += mix.deadline)    ? LoadKind::kDeadline
           : u < (at += mix.invalid)     ? LoadKind::kInvalid
           : u < (at += mix.oversized)   ? LoadKind::kOversized
                                         : LoadKind::kPlain;
  v1::GenerateRequest& r = p.request;
  r.set_id(id);
  int64_t prompt_len = p.kind == LoadKind::kOversized
                                 // Past the context; one in eight far past it (a ~400 KB message).
                                 ? shape.context + 1 + static_cast<int64_t>(unit(rng) < 0.125 ? 100000 : unit(rng) * 1000)
                                 : shape.prompt_len;
  p.long_prompt = p.kind == LoadKind::kPlain && shape.long_fraction > 0 && unit(rng) < shape.long_fraction;
  if (p.long_prompt) prompt_len = shape.long_prompt_len;
  if (p.kind != LoadKind::kOversized && !shape.shared_prefixes.empty()) {
    std::uniform_int_distribution<size_t> pick(0, shape.shared_prefixes.size() - 1);
    const std::vector<int32_t>& prefix = shape.shared_prefixes[pick(rng)];
    r.mutable_prompt_ids()->Add(prefix.begin(), prefix.end());
  }
  for (int64_t t = 0; t < prompt_len; ++t) r.add_prompt_ids(token(rng));
  r.set_max_new_tokens(shape.max_new_tokens);
  r.set_ignore_eos(!shape.stop_at_eos);
  switch (p.kind) {
    case LoadKind::kCancel:
      p.cancel_after_tokens = 1 + static_cast<int64_t>(unit(rng) * static_cast<double>(std::max<int64_t>(1, shape.max_new_tokens / 2)));
      break;
    case LoadKind::kDeadline:
      p.deadline_s = 0.01 + unit(rng) * 0.2;
      break;
    case LoadKind::kInvalid:
      switch (static_cast<int>(unit(rng) * 8)) {
        case 0: r.set_prompt_ids(0, static_cast<int32_t>(shape.vocab_size)); break;
        case 1: r.set_prompt_ids(0, -1); break;
        case 2: r.clear_prompt_ids(); break;
        case 3: r.mutable_sampling()->set_temperature(-1); break;
        case 4: r.mutable_sampling()->set_temperature(std::numeric_limits<float>::quiet_NaN()); break;
        case 5: r.mutable_sampling()->set_top_p(1.5f); break;
        case 6: r.set_logprobs(50); break;
        default: r.set_max_new_tokens(-1); break;
      }
      break;
    default:
      break;
  }
  return p;
}

bool ExpectedOutcome(LoadKind kind, grpc::StatusCode code) {
  switch (kind) {
    case LoadKind::kPlain:
      return code == grpc::StatusCode::OK;
    case LoadKind::kCancel:  // cancelled, unless it finished first
      return code == grpc::StatusCode::OK || code == grpc::StatusCode::CANCELLED;
    case LoadKind::kDeadline:  // expired; or refused admission in time for the deadline; or done first
      return code == grpc::StatusCode::OK || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
             code == grpc::StatusCode::RESOURCE_EXHAUSTED;
    case LoadKind::kInvalid:
    case LoadKind::kOversized:
      return code == grpc::StatusCode::INVALID_ARGUMENT;
  }
  return false;
}

}  // namespace daedalus
