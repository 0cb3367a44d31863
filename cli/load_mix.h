// The request mix of `loadgen --mix`: beside plain requests, requests the client cancels after a
// few tokens, requests whose deadline expires mid-generation, invalid requests (one field out of
// range) and prompts longer than the model's context; for each kind, the answers a correct
// server may give. A request that gets no answer at all is counted apart ("unanswered").
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "proto/serving.pb.h"

namespace daedalus {

enum class LoadKind { kPlain, kCancel, kDeadline, kInvalid, kOversized };
inline constexpr int kLoadKinds = 5;
const char* LoadKindName(LoadKind kind);  // "plain", "cancel", ...

struct LoadMix {  // fractions of all requests; the rest are plain
  double cancel = 0, deadline = 0, invalid = 0, oversized = 0;
};

// "cancel=0.05,deadline=0.05,invalid=0.05,oversized=0.02" (any subset; the sum at most 1).
absl::StatusOr<LoadMix> ParseLoadMix(const std::string& spec);

struct PlannedRequest {
  LoadKind kind = LoadKind::kPlain;
  v1::GenerateRequest request;
  int64_t cancel_after_tokens = 0;  // kCancel: the client cancels once it has this many
  double deadline_s = 0;            // kDeadline: the call's own deadline
  bool long_prompt = false;         // drawn with LoadShape::long_prompt_len
};

struct LoadShape {
  int64_t vocab_size = 0, context = 0;  // the model's (from ClusterStatus)
  int64_t prompt_len = 128, max_new_tokens = 64;
  bool stop_at_eos = false;
  // Shared system prompts: each request's prompt is one of these, drawn uniformly, followed by
  // prompt_len random tokens (none: prompt_len random tokens).
  std::vector<std::vector<int32_t>> shared_prefixes;
  // A share of the plain requests with long prompts of their own length (0: none).
  double long_fraction = 0;
  int64_t long_prompt_len = 0;
};

// `count` distinct random prompts of `length` tokens, the same for the same seed.
std::vector<std::vector<int32_t>> SharedPrefixes(int64_t count, int64_t length, int64_t vocab_size, uint64_t seed);

// Draws one request of the mix.
PlannedRequest PlanRequest(const LoadMix& mix, const LoadShape& shape, std::mt19937_64& rng, const std::string& id);

// Whether a correct server may end a request of `kind` with `code` (OK included).
bool ExpectedOutcome(LoadKind kind, grpc::StatusCode code);

}  // namespace daedalus
