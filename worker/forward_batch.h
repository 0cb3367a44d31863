// One forward step's batch (continuous batching): slices of sequences, each a run of consecutive
// tokens of one sequence — a prefill chunk or one decode token.
#pragma once

#include <cstdint>
#include <vector>

#include "worker/kv_cache.h"

namespace daedalus {

struct SequenceSlice {
  const PagedKvCache::PageTable* pages = nullptr;  // reserved up to start_pos + n_tokens
  int64_t start_pos = 0;  // absolute position of the slice's first token
  int64_t n_tokens = 0;
  int64_t offset = 0;     // first row of the slice in the batch
  // Generated tokens (past the prompt), not a prompt chunk: kAuto attends absorbed for these, so
  // how a prompt is cut into chunks never changes which form computes it.
  bool decode = false;
};

struct ForwardBatch {
  std::vector<int32_t> token_ids;      // [n_tokens], slices' tokens back to back
  std::vector<SequenceSlice> slices;
  std::vector<int64_t> logit_rows;     // batch rows whose next-token logits are wanted
};

}  // namespace daedalus
