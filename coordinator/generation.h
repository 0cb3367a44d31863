// One generation as the client APIs (gRPC and HTTP) see it: the request is turned into token
// ids (text through the tokenizer), validated and submitted; then its tokens come back with
// their decoded text — whole UTF-8 characters only — and stop strings end it early (the stop
// string itself is not returned, and the sequence is aborted on its worker).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/cluster.h"
#include "core/tokenizer.h"

namespace daedalus {

class Generation {
 public:
  using Clock = std::chrono::steady_clock;

  struct Delta {
    std::vector<v1::GeneratedToken> tokens;
    std::string text;  // decoded since the previous Delta (when text is wanted)
    int worker_rank = -1;
    bool finished = false;
    std::string finish_reason;  // "stop" | "length" | "cancelled"
    absl::Status status;        // when finished: why it failed, if it did
  };

  // Fills prompt_ids from prompt_text, validates, and submits. `tokenizer` may be null (then
  // text requests get FAILED_PRECONDITION). `start` is when the call arrived. Refusals are
  // counted in `metrics`.
  static absl::StatusOr<std::unique_ptr<Generation>> Start(Cluster& state, Metrics& metrics, const ModelConfig& config,
                                                           const Tokenizer* tokenizer, v1::GenerateRequest request,
                                                           Clock::time_point admit_by, Clock::time_point start);
  ~Generation();

  // Waits until the request is admitted to a worker (or `until`); its failure when it ended
  // first (e.g. RESOURCE_EXHAUSTED: not admitted in time).
  absl::Status WaitAdmitted(Clock::time_point until) { return channel_->WaitAdmitted(until); }
  // Waits up to `until` for news; false when there was none (then `out` is empty).
  bool Next(Clock::time_point until, Delta& out);
  // The client is gone: frees the sequence.
  void Cancel();

  const v1::GenerateRequest& request() const { return request_; }
  int64_t prompt_tokens() const { return request_.prompt_ids_size(); }
  int64_t completion_tokens() const { return completion_tokens_; }
  int64_t cached_tokens() const { return channel_->cached_tokens(); }  // prompt tokens from the prefix cache
  // The decoded text of one token alone (for logprobs), lossy.
  std::string TokenText(int32_t id) const;

 private:
  Generation(Cluster& state, const Tokenizer* tokenizer, v1::GenerateRequest request);
  // Moves the text that can no longer become part of a stop string into `out`; true when a
  // stop string was found (the text before it is moved, the rest dropped).
  bool ReleaseText(bool final, std::string& out);

  Cluster& state_;
  const Tokenizer* tokenizer_;
  v1::GenerateRequest request_;
  std::shared_ptr<RequestChannel> channel_;
  std::unique_ptr<StreamDecoder> decoder_;
  std::string held_;  // decoded text not yet released (might start a stop string)
  int64_t completion_tokens_ = 0;
  bool done_ = false;
};

}  // namespace daedalus
