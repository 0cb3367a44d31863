// What a client asks of the engine, and the engine's bookkeeping for it while it runs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "worker/kv_cache.h"
#include "worker/sampler.h"

namespace daedalus {

struct Request {
  std::string id;
  std::vector<int32_t> prompt_ids;
  int64_t max_new_tokens = 16;
  SamplingParams sampling;
  bool stop_at_eos = true;          // finish when the config's eos_token_id is sampled
  bool want_prompt_logits = false;  // keep a logits row for every prompt position
  int32_t logprobs = 0;             // report the sampled token's log-probability and the top N
  // Tokens already generated (and delivered) elsewhere, e.g. on a worker that was lost: the
  // sequence continues after them, as a preempted one does, and max_new_tokens counts them.
  std::vector<int32_t> generated_ids;
  // Prefill/decode disaggregation, the prefill side: once its next token is sampled the sequence
  // ends as "handoff" instead of decoding on, its pages held (Engine::held) until a decode
  // worker has read them (Engine::ReleaseHeld).
  bool hand_off = false;
};

// One request in the engine, from Add to its end.
struct Sequence {
  int64_t index = 0;  // from Engine::Add
  Request request;
  std::vector<int32_t> tokens;  // prompt, then generated
  int64_t n_cached = 0;         // leading tokens whose latents are in the cache
  int64_t prefix_hit = 0;       // prompt tokens read from cached pages when first admitted
  int64_t preemptions = 0;      // times its pages were taken back (it is then computed again)
  PagedKvCache::PageTable pages;
  PagedKvCache::PrefixChain chain;  // pages named for prefix caching
  bool done = false;

  int64_t prompt() const { return static_cast<int64_t>(request.prompt_ids.size()); }
  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt(); }
  // Tokens whose latents are still to compute: the prompt's at first, then the last sampled one.
  int64_t to_compute() const { return static_cast<int64_t>(tokens.size()) - n_cached; }
};

}  // namespace daedalus
