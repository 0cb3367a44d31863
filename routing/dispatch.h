// Dispatch and combine of routed tokens between ranks (expert parallelism).
//
// Dispatch sends each token's activations once to every rank serving one or more of its chosen
// experts (as DeepEP's kernels do: with top-8 over few ranks, most of a token's slots share a
// rank), with a reference per (token, slot) naming its source rank, slot, expert and row, so the
// receiver can group rows by local expert and a misrouted slot names itself. Combine sends the
// expert outputs back, one row per (token, slot); the source then sums a token's slots in slot
// order, which is ascending expert id (the gate sorts them), so the result does not depend on
// where experts live.
//
// Rows are not copied out of the exchange's buffers: received activations are read in place by
// the expert GEMMs (LinearProblem::x_rows) and expert outputs are written straight into the
// combine send buffer (y_rows). Rows for experts on this rank never enter the all-to-all: they
// are read from the caller's activations and their outputs kept here. Pointers stay valid
// until the next call of an exchange sharing its buffers (and, for this rank's own rows, while
// the caller's x lives).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/buffer.h"
#include "routing/placement.h"
#include "routing/transport.h"

namespace daedalus {

struct RowHeader {  // 16 bytes ahead of every combine row on the wire; one per received slot
  int32_t source_rank;
  int32_t slot;     // token · topk + k on the source rank
  int32_t expert;
  int32_t hidden;   // row width, checked on receipt
};

// A dispatch message to one rank (none where no slot goes there): a DispatchHeader, n_slots
// SlotRefs in slot order, then n_rows rows of `hidden` floats, one per token, in token order.
struct DispatchHeader {  // 16 bytes
  int32_t source_rank;
  int32_t n_rows;
  int32_t n_slots;
  int32_t hidden;  // row width, checked on receipt
};
// 16 bytes: the rows after the references start 16-byte aligned where the message does, as
// every message does where `hidden` is a multiple of 4 (every published model's is).
struct SlotRef {
  int32_t slot;    // token · topk + k on the source rank
  int32_t expert;
  int32_t row;     // the message's row holding the token's activations
  int32_t token;   // slot / topk: names the token in a malformed message's error
};

// Rows this rank received to compute, grouped by expert (ascending), arrival order within one.
struct ReceivedRows {
  std::vector<RowHeader> headers;     // [rows]
  std::vector<const float*> x;        // [rows]: each row's `hidden` activations
  std::vector<int64_t> expert_begin;  // rows of expert e: [expert_begin[e], expert_begin[e + 1])
  int64_t rows() const { return static_cast<int64_t>(headers.size()); }
};

// A quarter of the last-level cache (8 MB where the system does not say).
size_t StreamedDispatchBytes();

// An exchange's buffers, grown to the largest call and reused: at steady state no buffer is
// allocated, zeroed or page-faulted. The exchanges of a model's MoE layers share one set (their
// calls run one after another, each layer's Combine done before the next layer's Dispatch), so
// the memory is one layer's, not one per layer. After an exchange fails they are never freed:
// its transport may still be reading or writing them (dispatch.cc). Dispatch and Combine receive into vectors of
// their own (a vector alternating between the two sizes would zero its grown part every call);
// the send buffer's elements start uninitialised.
struct ExchangeBuffers {
  BufferOf<uint8_t> send;
  std::vector<uint8_t> dispatch_recv, combine_recv;
  std::vector<size_t> send_bytes, recv_bytes;
  FloatBuffer own_out;  // outputs of this rank's own rows, [own rows, hidden]
  // Dispatches sending more bytes than this write their rows past the caches (non-temporal
  // stores): a quarter of the last-level cache, which they would not survive in anyway.
  size_t stream_above = StreamedDispatchBytes();
};

class ExpertExchange {
 public:
  // `transport` and `placement` outlive the exchange. Exchanges given the same `buffers` must
  // not be used at once; without, the exchange has its own.
  ExpertExchange(Transport& transport, const Placement& placement, int64_t hidden, int64_t n_experts,
                 std::shared_ptr<ExchangeBuffers> buffers = nullptr);

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
  // Bytes for each rank (none for this one) of the last Dispatch, or the last CombineOutputs, of
  // any exchange sharing these buffers.
  const std::vector<size_t>& sent_bytes() const { return buffers_->send_bytes; }

 private:
  // Lays out combine rows (header + `hidden` floats) back to back by destination rank in the send
  // buffer: writes each header and returns where each row's floats go. dest[i] is row i's rank.
  std::vector<float*> Layout(const std::vector<int>& dest, const std::vector<RowHeader>& headers);
  // Writes the dispatch messages into the send buffer: dest[slot] is each slot's rank.
  void LayoutDispatch(const float* x, int64_t topk, const std::vector<int>& dest, const int32_t* expert_ids);
  // Reads one rank's dispatch message (bytes of it at `at`) into `arrived`.
  absl::Status ReadDispatch(int source, const uint8_t* at, size_t bytes, const std::string& what,
                            std::vector<RowHeader>& arrived, std::vector<const float*>& arrived_x) const;
  absl::Status Send(std::vector<uint8_t>& recv, const std::string& what);

  Transport& transport_;
  const Placement& placement_;
  int64_t hidden_, n_experts_;
  int64_t sent_slots_ = 0;
  std::shared_ptr<ExchangeBuffers> buffers_;
  std::vector<int32_t> own_slots_;  // slots of this rank's own rows, in own_out order
};

}  // namespace daedalus
