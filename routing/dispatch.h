// Dispatch and combine of routed tokens between ranks (expert parallelism).
//
// Dispatch sends each (token, slot) activation to the rank serving its chosen expert; every row
// on the wire carries a header naming its source rank, slot and expert, so the receiver can
// group rows by local expert and a misrouted row names itself. Combine sends the expert outputs
// back; the source then holds one output row per (token, slot) and sums a token's slots in slot
// order, which is ascending expert id (the gate sorts them), so the result does not depend on
// where experts live.
//
// Rows are not copied out of the exchange's buffers: received activations are read in place by
// the expert GEMMs (LinearProblem::x_rows) and expert outputs are written straight into the
// combine send buffer (y_rows). Rows for experts on this rank never enter the all-to-all: they
// are read from the caller's activations and their outputs kept here. Pointers stay valid
// until the exchange's next call (and, for this rank's own rows, while the caller's x lives).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/buffer.h"
#include "routing/placement.h"
#include "routing/transport.h"

namespace daedalus {

struct RowHeader {  // 16 bytes ahead of every row on the wire
  int32_t source_rank;
  int32_t slot;     // token · topk + k on the source rank
  int32_t expert;
  int32_t hidden;   // row width, checked on receipt
};

// Rows this rank received to compute, grouped by expert (ascending), arrival order within one.
struct ReceivedRows {
  std::vector<RowHeader> headers;     // [rows]
  std::vector<const float*> x;        // [rows]: each row's `hidden` activations
  std::vector<int64_t> expert_begin;  // rows of expert e: [expert_begin[e], expert_begin[e + 1])
  int64_t rows() const { return static_cast<int64_t>(headers.size()); }
};

class ExpertExchange {
 public:
  // `transport` and `placement` outlive the exchange.
  ExpertExchange(Transport& transport, const Placement& placement, int64_t hidden, int64_t n_experts);

  // x [n_tokens, hidden]; expert_ids [n_tokens, topk]. Collective: every rank calls it, also
  // with n_tokens = 0. `what` names the call in deadline errors ("layer 3 step 17").
  absl::Status Dispatch(const float* x, int64_t n_tokens, int64_t topk, const int32_t* expert_ids,
                        const std::string& what, ReceivedRows& received);
  // Lays out the combine: returns, for each received row, where its expert output (`hidden`
  // floats) must be written before Combine.
  std::vector<float*> CombineOutputs(const ReceivedRows& received);
  // Collective: sends the outputs back. slot_rows[slot] then points at the output for each
  // (token, slot) of the last Dispatch.
  absl::Status Combine(const std::string& what, std::vector<const float*>& slot_rows);

 private:
  // Lays out rows (header + `hidden` floats) back to back by destination rank in send_: writes
  // each header and returns where each row's floats go. dest[i] is row i's rank.
  std::vector<float*> Layout(const std::vector<int>& dest, const std::vector<RowHeader>& headers);
  absl::Status Send(const std::string& what);

  Transport& transport_;
  const Placement& placement_;
  int64_t hidden_, n_experts_;
  int64_t sent_slots_ = 0;
  // Reused across calls: at steady state no buffer is allocated, zeroed or page-faulted.
  std::vector<uint8_t> send_, recv_;
  std::vector<size_t> send_bytes_, recv_bytes_;
  FloatBuffer own_out_;             // outputs of this rank's own rows, [own rows, hidden]
  std::vector<int32_t> own_slots_;  // their slots, in own_out_ order
};

}  // namespace daedalus
