// Time to first token under closed-loop load, step by step. C clients each send their next
// request the moment the last one ends; the coordinator admits them first come, first served,
// to the worker running the fewest sequences; each of the W workers builds its step from its
// decode tokens first, then prompt chunks (at most prefill_chunk tokens of one prompt) up to
// max_batch_tokens; the workers step in lockstep, a step lasting as long as the slowest one's:
//   step_w = (decode tokens ? decode_step : 0) + prompt tokens · prefill_per_token.
// Clients whose requests end in the same step send the next ones together, so waves of
// prompts form and are prefilled over several steps: what one prefill's time leaves out. A
// request sent at the end of a step reaches its worker while the next step runs, and joins the
// one after it (workers with nothing to run wait for it instead).
// A request's TTFT runs from its sending to the end of the step that computes its last prompt
// token (its first token comes from that step).
#pragma once

#include <cstdint>

namespace daedalus {

struct ClosedLoopLoad {
  int64_t clients = 1, workers = 1;
  int64_t prompt_len = 128, max_new_tokens = 64;
  int64_t max_batch_tokens = 512, prefill_chunk = 512;  // the engine's defaults
};

struct ClosedLoopCosts {
  double decode_step_s = 0;       // a step with any decode token in it
  double prefill_per_token_s = 0;  // each prompt token computed in a step
};

struct ClosedLoopResult {
  double ttft_p50_s = 0;  // over the requests sent after the first wave
  int64_t requests = 0;   // those it was measured over
};

// Runs until `requests` requests have ended after the first wave (one per client).
ClosedLoopResult SimulateClosedLoop(const ClosedLoopLoad& load, const ClosedLoopCosts& costs, int64_t requests);

}  // namespace daedalus
