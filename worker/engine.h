// A single-process serving engine: continuous batching over many requests, long prompts
// cut into prefill chunks, decode tokens of all running sequences batched into one step
// (worker/scheduler.h decides which), sampling, and the events a server streams.
// Not thread-safe; one thread drives Step().
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "routing/dispatch.h"
#include "worker/model.h"
#include "worker/profiling_backend.h"
#include "worker/request.h"
#include "worker/sampler.h"
#include "worker/scheduler.h"

namespace daedalus {

// Produced by a step, for a server that streams them (see Engine::TakeEvents).
struct TokenOut {
  int64_t index = 0;  // from Add
  int32_t token = 0;
  float logprob = 0;  // log-softmax of the raw logits, when the request asked for logprobs
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
  int64_t cached_tokens = -1;  // on a sequence's first token: prompt tokens read from cached pages
};

struct Result {
  std::string id;
  std::vector<int32_t> generated_ids;
  std::string finish_reason;  // "length" | "stop" | "error"
  absl::Status status;
  std::vector<std::vector<float>> prompt_logits;  // when asked for
  std::vector<TokenOut> logprobs;                 // per generated token, when the request asked for logprobs
};
struct FinishOut {
  int64_t index;
  std::string reason;  // "stop" | "length" | "cancelled" | "error" | "handoff" (Request::hand_off)
  absl::Status status;
};

struct EngineOptions {
  int64_t max_batch_tokens = 512;  // tokens per forward step (decode tokens first, then prefill)
  int64_t prefill_chunk = 512;     // longest prefill slice of one sequence per step
  int64_t max_running = 256;       // sequences in the batch at once
  // false for a long-running server: finished requests are reported by TakeEvents only, so
  // memory does not grow with the number served.
  bool keep_results = true;
  KvCacheOptions kv;
  AttentionPath attention = AttentionPath::kAuto;
  std::optional<int64_t> eos_token_id;  // end of sequence; unset: the config's eos_token_id
  // Expert parallelism: when set, this engine is one rank of many. Its own requests run here
  // (attention and KV cache), routed experts run where `placement` puts them, and every rank
  // steps in lockstep until no rank has work. Both outlive the engine.
  Transport* transport = nullptr;
  const std::vector<Placement>* placements = nullptr;  // by layer
  // When set, forward steps run on it (a GPU: worker/device_backend.h) instead of on a CpuBackend
  // over this engine's cache; kv.host_pool should then be false and kv's page size and capacity
  // those of the backend's cache. Outlives the engine.
  Backend* backend = nullptr;
  // Times every op of the forward pass (TakeOpTimes), waiting for a device backend after each.
  bool profile_ops = false;
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
  // Ends a queued or running request, freeing its KV pages; it finishes as "cancelled".
  // False when it is not (or no longer) here.
  bool Cancel(int64_t index);
  // Runs one forward step over running sequences; false when there was nothing to do (with
  // expert parallelism: when no rank had anything to do), or after an error (see status()).
  bool Step();
  // With expert parallelism, for a caller that has agreed with every rank that some rank has
  // work (e.g. an all-reduce of pending()): runs the step, possibly with an empty batch.
  // False after an error.
  bool StepAgreed();
  // Requests queued or running here (not those waiting for imported latents).
  int64_t pending() const { return scheduler_.pending(); }

  // Prefill/decode disaggregation. The prefill side: a Request::hand_off sequence that ended as
  // "handoff" holds its pages, with the latents of its first `tokens` positions, until released.
  struct HeldPages {
    PagedKvCache::PageTable pages;
    int64_t tokens = 0;
  };
  const HeldPages* held(int64_t index) const;  // null when not held
  void ReleaseHeld(int64_t index);
  // The decode side: a valid request whose first `kv_tokens` positions (fewer than its prompt
  // plus generated tokens) have latents elsewhere. Reserves their pages, to be filled (as bytes
  // of the cache's pool) before Imported; until then the request is not pending.
  absl::StatusOr<int64_t> Import(Request request, int64_t kv_tokens);
  const PagedKvCache::PageTable* import_pages(int64_t index) const;  // null when not importing
  // The latents arrived (`ok`): the sequence decodes from the next step. Or they did not: it is
  // computed from its tokens, as a preempted sequence is, with the same result.
  void Imported(int64_t index, bool ok);
  // Tokens sampled and requests finished since the last call.
  void TakeEvents(std::vector<TokenOut>& tokens, std::vector<FinishOut>& finished);
  // Steps until every queued request has finished; results in the order of Add.
  std::vector<Result> RunToCompletion();
  // The first error of a collective step (a peer lost, a deadline passed); the engine stops.
  const absl::Status& status() const { return status_; }
  // The cluster re-formed around this rank (a peer lost or joined; the transport and the
  // placements were switched in place): forgets the error of the step that was cut short. That
  // step changed no sequence (only latents it will write again), so the next one computes it
  // again. Sequences, KV cache and pending events are kept.
  void Resume() { status_ = absl::OkStatus(); }

  const StepStats& last_step() const { return last_step_; }
  // Routed (token, slot) pairs of this rank's tokens, per layer and expert, since start.
  const ExpertLoad& expert_load() const { return expert_load_; }
  const PagedKvCache& cache() const { return cache_; }
  PagedKvCache& cache() { return cache_; }
  // Prompt tokens admitted, and those of them whose latents came from cached pages (prefix caching).
  int64_t prompt_tokens() const { return scheduler_.prompt_tokens(); }
  int64_t prompt_tokens_cached() const { return scheduler_.prompt_tokens_cached(); }
  // Sequences whose pages were taken back when the pool ran out (each computed again).
  int64_t preemptions() const { return scheduler_.preemptions(); }
  const DeepSeekModel& model() const { return model_; }
  // With options.profile_ops: each kind of op's time since the last call (else empty).
  std::vector<ProfilingBackend::OpTime> TakeOpTimes() {
    return profiler_ != nullptr ? profiler_->Take() : std::vector<ProfilingBackend::OpTime>{};
  }

 private:
  std::unique_ptr<Sequence> NewSequence(Request request);  // with its result slot
  bool RunStep(const std::vector<ScheduledSlice>& slices);
  void Finish(Sequence& seq, const std::string& reason, absl::Status status = absl::OkStatus());

  EngineOptions options_;
  DeepSeekModel model_;
  PagedKvCache cache_;
  std::unique_ptr<Backend> cpu_backend_;  // when options_.backend is null
  std::unique_ptr<ProfilingBackend> profiler_;  // with options_.profile_ops
  Backend* backend_;  // where steps run: options_.backend or cpu_backend_, through profiler_ if set
  Scheduler scheduler_;
  int64_t next_index_ = 0;
  std::vector<Result> results_;  // by index, when options_.keep_results
  std::unordered_map<int64_t, HeldPages> held_;                      // by index
  std::unordered_map<int64_t, std::unique_ptr<Sequence>> importing_;  // by index
  std::vector<TokenOut> token_events_;
  std::vector<FinishOut> finish_events_;
  StepStats last_step_;
  std::vector<std::unique_ptr<ExpertExchange>> exchanges_;  // by layer; empty without a transport
  ExpertLoad expert_load_;
  int64_t steps_ = 0;
  absl::Status status_;
};

}  // namespace daedalus
