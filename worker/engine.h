// A single-process serving engine: continuous batching over many requests, long prompts
// cut into prefill chunks, decode tokens of all running sequences batched into one step.
// Not thread-safe; one thread drives Step().
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "routing/dispatch.h"
#include "worker/model.h"
#include "worker/sampler.h"

namespace daedalus {

struct Request {
  std::string id;
  std::vector<int32_t> prompt_ids;
  int64_t max_new_tokens = 16;
  SamplingParams sampling;
  bool stop_at_eos = true;          // finish when the config's eos_token_id is sampled
  bool want_prompt_logits = false;  // keep a logits row for every prompt position
};

struct Result {
  std::string id;
  std::vector<int32_t> generated_ids;
  std::string finish_reason;  // "length" | "stop" | "error"
  absl::Status status;
  std::vector<std::vector<float>> prompt_logits;  // when asked for
};

struct EngineOptions {
  int64_t max_batch_tokens = 512;  // tokens per forward step (decode tokens first, then prefill)
  int64_t prefill_chunk = 512;     // longest prefill slice of one sequence per step
  int64_t max_running = 256;       // sequences in the batch at once
  KvCacheOptions kv;
  AttentionPath attention = AttentionPath::kAuto;
  std::optional<int64_t> eos_token_id;  // end of sequence; unset: the config's eos_token_id
  // Expert parallelism: when set, this engine is one rank of many. Its own requests run here
  // (attention and KV cache), routed experts run where `placement` puts them, and every rank
  // steps in lockstep until no rank has work. Both outlive the engine.
  Transport* transport = nullptr;
  const std::vector<Placement>* placements = nullptr;  // by layer
};

struct StepStats {
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
};

class Engine {
 public:
  Engine(const ModelWeights& weights, const EngineOptions& options);

  // Checks a request against the model (token ids, lengths, sampling fields).
  absl::Status Validate(const Request& request) const;
  // Queues a valid request; the index names its result.
  absl::StatusOr<int64_t> Add(Request request);
  // Runs one forward step over running sequences; false when there was nothing to do (with
  // expert parallelism: when no rank had anything to do), or after an error (see status()).
  bool Step();
  // Steps until every queued request has finished; results in the order of Add.
  std::vector<Result> RunToCompletion();
  // The first error of a collective step (a peer lost, a deadline passed); the engine stops.
  const absl::Status& status() const { return status_; }

  const StepStats& last_step() const { return last_step_; }
  // Routed (token, slot) pairs of this rank's tokens, per layer and expert, since start.
  const ExpertLoad& expert_load() const { return expert_load_; }
  const PagedKvCache& cache() const { return cache_; }
  const DeepSeekModel& model() const { return model_; }

 private:
  struct Sequence {
    int64_t index;
    Request request;
    std::vector<int32_t> tokens;  // prompt, then generated
    int64_t n_cached = 0;         // tokens whose latents are in the cache
    PagedKvCache::PageTable pages;
    std::unique_ptr<Sampler> sampler;
    bool done = false;
  };
  void Admit();
  void Finish(Sequence& seq, const std::string& reason);

  EngineOptions options_;
  DeepSeekModel model_;
  PagedKvCache cache_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  std::vector<Result> results_;
  StepStats last_step_;
  std::vector<std::unique_ptr<ExpertExchange>> exchanges_;  // by layer; empty without a transport
  ExpertLoad expert_load_;
  int64_t steps_ = 0;
  absl::Status status_;
};

}  // namespace daedalus
