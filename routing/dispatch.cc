#include "routing/dispatch.h"

#include <emmintrin.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace daedalus {

namespace {

// n floats from src to dst past the caches (non-temporal stores; a dst that is not 16-byte
// aligned is copied normally): a dispatch larger than the caches would otherwise read every
// destination line in before writing it.
void StreamFloats(const float* src, size_t n, float* dst) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  size_t i = 0;
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}

}  // namespace

// Dispatch messages past this many bytes are written with StreamFloats: the message would not
// survive in the cache before the transport reads it. bench-a2a, 2 ranks, hidden 7168 (AMD EPYC,
// 32 MB L3; three pairs alternating, medians): 1,024 tokens a rank (29 MB) 8.2 -> 7.8 ms a
// dispatch, 4,096 tokens (117 MB) 32.3 -> 27.7 ms; 128 tokens (3.6 MB) were faster stored normally.
size_t StreamedDispatchBytes() {
  static const size_t bytes = [] {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return l3 > 0 ? static_cast<size_t>(l3) / 4 : size_t{8} << 20;
  }();
  return bytes;
}

ExpertExchange::ExpertExchange(Transport& transport, const Placement& placement, int64_t hidden, int64_t n_experts,
                               std::shared_ptr<ExchangeBuffers> buffers)
    : transport_(transport),
      placement_(placement),
      hidden_(hidden),
      n_experts_(n_experts),
      buffers_(buffers != nullptr ? std::move(buffers) : std::make_shared<ExchangeBuffers>()) {}

std::vector<float*> ExpertExchange::Layout(const std::vector<int>& dest, const std::vector<RowHeader>& headers) {
  const size_t row_bytes = sizeof(RowHeader) + hidden_ * sizeof(float);
  const int me = transport_.rank();
  std::vector<size_t>& send_bytes = buffers_->send_bytes;
  BufferOf<uint8_t>& send = buffers_->send;
  send_bytes.assign(transport_.world_size(), 0);
  for (int d : dest)
    if (d != me) send_bytes[d] += row_bytes;
  std::vector<size_t> offset(transport_.world_size(), 0);
  for (size_t r = 1; r < offset.size(); ++r) offset[r] = offset[r - 1] + send_bytes[r - 1];
  send.resize(offset.back() + send_bytes.back());
  std::vector<float*> values(dest.size(), nullptr);  // null for rows that stay on this rank
  for (size_t i = 0; i < dest.size(); ++i) {
    if (dest[i] == me) continue;
    uint8_t* at = send.data() + offset[dest[i]];
    offset[dest[i]] += row_bytes;
    std::memcpy(at, &headers[i], sizeof(RowHeader));
    values[i] = reinterpret_cast<float*>(at + sizeof(RowHeader));  // 16-byte header: floats stay aligned
  }
  return values;
}

void ExpertExchange::LayoutDispatch(const float* x, int64_t topk, const std::vector<int>& dest,
                                    const int32_t* expert_ids) {
  const int world = transport_.world_size(), me = transport_.rank();
  const size_t row_floats = static_cast<size_t>(hidden_);
  // Per rank: its slots and rows (a token's first slot there opens its row).
  std::vector<int32_t> n_slots(world, 0), n_rows(world, 0), last_token(world, -1);
  for (int64_t slot = 0; slot < sent_slots_; ++slot) {
    const int d = dest[slot];
    if (d == me) continue;
    ++n_slots[d];
    if (last_token[d] != slot / topk) last_token[d] = static_cast<int32_t>(slot / topk), ++n_rows[d];
  }
  std::vector<size_t>& send_bytes = buffers_->send_bytes;
  BufferOf<uint8_t>& send = buffers_->send;
  send_bytes.assign(world, 0);
  for (int d = 0; d < world; ++d) {
    if (n_slots[d] > 0)
      send_bytes[d] = sizeof(DispatchHeader) + n_slots[d] * sizeof(SlotRef) + n_rows[d] * row_floats * sizeof(float);
  }
  std::vector<size_t> begin(world, 0);
  for (int d = 1; d < world; ++d) begin[d] = begin[d - 1] + send_bytes[d - 1];
  send.resize(begin.back() + send_bytes.back());
  const bool stream = send.size() > buffers_->stream_above;
  std::vector<int32_t> slots_written(world, 0), rows_written(world, 0);
  for (int d = 0; d < world; ++d) {
    if (n_slots[d] == 0) continue;
    const DispatchHeader h{me, n_rows[d], n_slots[d], static_cast<int32_t>(hidden_)};
    std::memcpy(send.data() + begin[d], &h, sizeof h);
    last_token[d] = -1;
  }
  for (int64_t slot = 0; slot < sent_slots_; ++slot) {
    const int d = dest[slot];
    if (d == me) continue;
    const int32_t token = static_cast<int32_t>(slot / topk);
    uint8_t* message = send.data() + begin[d];
    if (last_token[d] != token) {  // the token's row, once for this rank
      last_token[d] = token;
      float* row = reinterpret_cast<float*>(message + sizeof(DispatchHeader) + n_slots[d] * sizeof(SlotRef)) +
                   rows_written[d]++ * row_floats;
      if (stream) StreamFloats(x + token * hidden_, row_floats, row);
      else std::memcpy(row, x + token * hidden_, row_floats * sizeof(float));
    }
    const SlotRef ref{static_cast<int32_t>(slot), expert_ids[slot], rows_written[d] - 1, token};
    std::memcpy(message + sizeof(DispatchHeader) + slots_written[d]++ * sizeof(SlotRef), &ref, sizeof ref);
  }
  if (stream) _mm_sfence();
}

absl::Status ExpertExchange::ReadDispatch(int source, const uint8_t* at, size_t bytes, const std::string& what,
                                          std::vector<RowHeader>& arrived, std::vector<const float*>& arrived_x) const {
  const int me = transport_.rank();
  auto malformed = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat("rank ", me, ": dispatch (", what, ") from rank ", source, ": ", why));
  };
  DispatchHeader h;
  if (bytes < sizeof h) return malformed(absl::StrCat(bytes, " bytes, shorter than a message header"));
  std::memcpy(&h, at, sizeof h);
  const size_t row_bytes = static_cast<size_t>(hidden_) * sizeof(float);
  if (h.source_rank != source || h.hidden != hidden_ || h.n_rows < 0 || h.n_slots < h.n_rows ||
      bytes != sizeof h + static_cast<size_t>(h.n_slots) * sizeof(SlotRef) + static_cast<size_t>(h.n_rows) * row_bytes) {
    return malformed(absl::StrCat(bytes, " bytes under a header naming rank ", h.source_rank, ", ", h.n_rows, " rows of ",
                                  h.hidden, " values and ", h.n_slots, " slots (this rank's rows hold ", hidden_, ")"));
  }
  const auto* rows = reinterpret_cast<const float*>(at + sizeof h + h.n_slots * sizeof(SlotRef));
  for (int32_t i = 0; i < h.n_slots; ++i) {
    SlotRef ref;
    std::memcpy(&ref, at + sizeof h + i * sizeof(SlotRef), sizeof ref);
    if (ref.row < 0 || ref.row >= h.n_rows || ref.slot < 0 || ref.token < 0) {
      return malformed(
          absl::StrCat("slot ", ref.slot, " of token ", ref.token, " refers to row ", ref.row, " of ", h.n_rows));
    }
    if (ref.expert < 0 || ref.expert >= n_experts_ || !placement_.Holds(me, ref.expert)) {
      return absl::InternalError(absl::StrCat("rank ", me, ": dispatch (", what, ") received a row for expert ",
                                              ref.expert, " from rank ", source, " slot ", ref.slot,
                                              ", which this rank does not serve"));
    }
    arrived.push_back(RowHeader{source, ref.slot, ref.expert, static_cast<int32_t>(hidden_)});
    arrived_x.push_back(rows + static_cast<size_t>(ref.row) * hidden_);
  }
  return absl::OkStatus();
}

namespace {

// Buffers of exchanges that failed, kept for the life of the process: a transport that gave up
// on a collective (a deadline, an interrupt, a lost peer) may still have a request it could not
// take back reading the send buffer or writing a receive (a rendezvous under way over ucx or
// mpi), and the engine that owned them is rebuilt at the next formation. One set a failure.
void KeepFromFailedExchange(std::shared_ptr<ExchangeBuffers> buffers) {
  static std::mutex mu;
  static auto* kept = new std::vector<std::shared_ptr<ExchangeBuffers>>();  // never destroyed
  std::lock_guard<std::mutex> lock(mu);
  kept->push_back(std::move(buffers));
}

}  // namespace

absl::Status ExpertExchange::Send(std::vector<uint8_t>& recv, const std::string& what) {
  absl::Status s = transport_.AllToAllV(buffers_->send.data(), buffers_->send_bytes, recv, buffers_->recv_bytes, what);
  if (!s.ok()) KeepFromFailedExchange(buffers_);
  return s;
}

absl::Status ExpertExchange::Dispatch(const float* x, int64_t n_tokens, int64_t topk, const int32_t* expert_ids,
                                      const std::string& what, ReceivedRows& received) {
  const int world = transport_.world_size(), me = transport_.rank();
  sent_slots_ = n_tokens * topk;
  std::vector<int> dest(sent_slots_);
  for (int64_t slot = 0; slot < sent_slots_; ++slot)
    dest[slot] = placement_.RankFor(expert_ids[slot], slot / topk, slot % topk);
  LayoutDispatch(x, topk, dest, expert_ids);
  std::vector<uint8_t>& recv = buffers_->dispatch_recv;
  const std::vector<size_t>& recv_bytes = buffers_->recv_bytes;
  RETURN_IF_ERROR(Send(recv, what));
  // This rank's own slots (read from x in place), then the received ones by source rank, each
  // rank's in slot order; grouped by expert, keeping that order within an expert.
  std::vector<RowHeader> arrived;
  std::vector<const float*> arrived_x;
  for (int64_t slot = 0; slot < sent_slots_; ++slot) {
    if (dest[slot] != me) continue;
    arrived.push_back(RowHeader{me, static_cast<int32_t>(slot), expert_ids[slot], static_cast<int32_t>(hidden_)});
    arrived_x.push_back(x + (slot / topk) * hidden_);
  }
  size_t total = 0;
  for (const size_t b : recv_bytes) total += b;
  if (recv_bytes.size() != static_cast<size_t>(world) || total != recv.size()) {
    return absl::DataLossError(absl::StrCat("rank ", me, ": dispatch (", what, ") received ", recv.size(),
                                            " bytes where the ranks' counts sum to ", total));
  }
  if (recv_bytes[me] != 0) {
    return absl::DataLossError(absl::StrCat("rank ", me, ": dispatch (", what, ") received ", recv_bytes[me],
                                            " bytes from itself, which sends its own rows no message"));
  }
  size_t at = 0;
  for (int source = 0; source < world; ++source) {
    const size_t bytes = recv_bytes[source];
    if (bytes > 0) RETURN_IF_ERROR(ReadDispatch(source, recv.data() + at, bytes, what, arrived, arrived_x));
    at += bytes;
  }
  const int64_t rows = static_cast<int64_t>(arrived.size());
  std::vector<int64_t> count(n_experts_ + 1, 0);
  for (int64_t i = 0; i < rows; ++i) ++count[arrived[i].expert + 1];
  received.expert_begin.assign(n_experts_ + 1, 0);
  for (int64_t e = 0; e < n_experts_; ++e) received.expert_begin[e + 1] = received.expert_begin[e] + count[e + 1];
  std::vector<int64_t> next(received.expert_begin.begin(), received.expert_begin.end() - 1);
  received.headers.resize(rows);
  received.x.resize(rows);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t at_row = next[arrived[i].expert]++;
    received.headers[at_row] = arrived[i];
    received.x[at_row] = arrived_x[i];
  }
  return absl::OkStatus();
}

std::vector<float*> ExpertExchange::CombineOutputs(const ReceivedRows& received) {
  const int me = transport_.rank();
  std::vector<int> dest(received.rows());
  int64_t own = 0;
  for (int64_t i = 0; i < received.rows(); ++i) {
    dest[i] = received.headers[i].source_rank;
    own += dest[i] == me;
  }
  std::vector<float*> values = Layout(dest, received.headers);
  FloatBuffer& own_out = buffers_->own_out;
  own_out.resize(own * hidden_);
  own_slots_.clear();
  for (int64_t i = 0; i < received.rows(); ++i) {
    if (dest[i] != me) continue;
    values[i] = &own_out[own_slots_.size() * hidden_];
    own_slots_.push_back(received.headers[i].slot);
  }
  return values;
}

absl::Status ExpertExchange::Combine(const std::string& what, std::vector<const float*>& slot_rows) {
  const int me = transport_.rank();
  const size_t row_bytes = sizeof(RowHeader) + hidden_ * sizeof(float);
  const std::vector<uint8_t>& recv = buffers_->combine_recv;
  RETURN_IF_ERROR(Send(buffers_->combine_recv, what));
  const int64_t rows = static_cast<int64_t>(recv.size() / row_bytes) + static_cast<int64_t>(own_slots_.size());
  if (rows != sent_slots_ || recv.size() % row_bytes != 0) {
    return absl::InternalError(absl::StrCat("rank ", me, ": combine (", what, ") got ", recv.size(), " bytes back for ",
                                            sent_slots_, " dispatched rows"));
  }
  slot_rows.assign(sent_slots_, nullptr);
  for (size_t i = 0; i < own_slots_.size(); ++i) {
    const int32_t slot = own_slots_[i];
    if (slot < 0 || slot >= sent_slots_ || slot_rows[slot] != nullptr) {
      return absl::InternalError(absl::StrCat("rank ", me, ": combine (", what, ") holds an output of its own for",
                                              " slot ", slot, ", which it did not dispatch to itself"));
    }
    slot_rows[slot] = &buffers_->own_out[i * hidden_];
  }
  for (int64_t i = 0; i < static_cast<int64_t>(recv.size() / row_bytes); ++i) {
    RowHeader h;
    std::memcpy(&h, recv.data() + i * row_bytes, sizeof h);
    if (h.source_rank != me || h.slot < 0 || h.slot >= sent_slots_ || slot_rows[h.slot] != nullptr) {
      return absl::InternalError(absl::StrCat("rank ", me, ": combine (", what, ") got a row for rank ", h.source_rank,
                                              " slot ", h.slot, " (expert ", h.expert, ") that this rank did not send"));
    }
    slot_rows[h.slot] = reinterpret_cast<const float*>(recv.data() + i * row_bytes + sizeof h);
  }
  return absl::OkStatus();
}

}  // namespace daedalus
