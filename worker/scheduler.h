// Which sequences run in the next forward step, and how many tokens of each: admission in
// arrival order with prefix-cache hits, the chunked-prefill token budget, KV pages taken as
// sequences grow, and preemption when the pool runs out. Not thread-safe; the engine's step
// loop owns it.
//
// The policy:
// - Admission, in arrival order while fewer than max_running run: a sequence takes the cached
//   pages of its longest cached prefix (prefix caching; at least its last token is computed) and
//   pages for the rest of its tokens, leaving one free page for each running sequence that will
//   still grow; otherwise it and everything after it wait. One exception: a sequence whose next
//   page another running sequence is computing right now waits for that page to be cached
//   instead of computing it twice, and lets later sequences pass meanwhile.
// - The step's tokens (max_batch_tokens): one for each decoding sequence first, then prefill
//   chunks (at most prefill_chunk per sequence) in admission order. A chunk never spans the
//   prompt's end, so generated tokens computed again after a preemption are attended in the
//   same (decode) form as when they were first computed.
// - A decoding sequence takes a page when its next token starts one. When none is free, the
//   newest running sequence is preempted: its pages go back (full ones stay cached by name),
//   and it waits at the head of the queue to be computed again from its tokens so far (sampling
//   draws depend on the position alone) — so its output is what it would have been.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <unordered_map>
#include <vector>

#include "worker/kv_cache.h"
#include "worker/request.h"

namespace daedalus {

struct SchedulerOptions {
  int64_t max_batch_tokens = 512;  // tokens per forward step
  int64_t prefill_chunk = 512;     // longest prefill slice of one sequence per step
  int64_t max_running = 256;       // sequences in the batch at once
};

// Tokens [start, start + n) of one sequence, computed in the next step.
struct ScheduledSlice {
  Sequence* seq = nullptr;
  int64_t start = 0, n = 0;
  bool decode = false;   // past the prompt: generated tokens
  bool samples = false;  // reaches the sequence's last token, whose logits give the next one
};

class Scheduler {
 public:
  Scheduler(PagedKvCache& cache, const SchedulerOptions& options);

  void Add(std::unique_ptr<Sequence> seq);  // queues it behind the others
  // Runs a sequence whose pages already hold the latents of its first n_cached tokens (read
  // from another worker): it decodes from the next step, without waiting for admission.
  void AddRunning(std::unique_ptr<Sequence> seq);
  // Admits what fits, takes pages for the growing sequences (preempting when the pool runs
  // out), and hands out the step's token budget. Empty when nothing can run.
  std::vector<ScheduledSlice> Schedule();
  // The step computed `slices`: their latents are in the cache. Advances each sequence and
  // names its newly filled pages for prefix caching.
  void Computed(const std::vector<ScheduledSlice>& slices);
  // Forgets running sequences marked done, returning their pages.
  void Retire();
  // Takes a queued or running sequence out (its pages returned); null when it is not here.
  std::unique_ptr<Sequence> Remove(int64_t index);
  // Takes every sequence out, running ones first.
  std::vector<std::unique_ptr<Sequence>> RemoveAll();

  int64_t pending() const { return static_cast<int64_t>(running_.size() + waiting_.size()); }
  const std::vector<std::unique_ptr<Sequence>>& running() const { return running_; }
  const std::deque<std::unique_ptr<Sequence>>& waiting() const { return waiting_; }
  // Prompt tokens admitted (each sequence once), those read from cached pages, and preemptions.
  int64_t prompt_tokens() const { return prompt_tokens_; }
  int64_t prompt_tokens_cached() const { return prompt_tokens_cached_; }
  int64_t preemptions() const { return preemptions_; }

 private:
  void Admit();
  // Pages for the token `seq` decodes next; false when the pool ran out and `seq` itself (the
  // newest) was preempted.
  bool Grow(Sequence& seq);
  void Preempt(size_t running_index);
  void Release(Sequence& seq);  // its pages, and the pages it was computing
  // The names of `seq`'s full pages it will compute (its tokens after its cached prefix).
  void NoteComputing(Sequence& seq);
  void DoneComputing(Sequence& seq);

  PagedKvCache& cache_;
  const SchedulerOptions options_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
  // Content names of full pages running sequences are computing and have not yet named, counted.
  std::unordered_map<uint64_t, int> computing_;
  struct Computing {
    int64_t first_page = 0;       // the page the first name is for
    std::vector<uint64_t> names;  // in page order
  };
  std::unordered_map<const Sequence*, Computing> computing_by_;
  int64_t prompt_tokens_ = 0, prompt_tokens_cached_ = 0, preemptions_ = 0;
};

}  // namespace daedalus
