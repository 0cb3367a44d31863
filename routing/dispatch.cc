#include "routing/dispatch.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace daedalus {

ExpertExchange::ExpertExchange(Transport& transport, const Placement& placement, int64_t hidden, int64_t n_experts)
    : transport_(transport), placement_(placement), hidden_(hidden), n_experts_(n_experts) {}

std::vector<float*> ExpertExchange::Layout(const std::vector<int>& dest, const std::vector<RowHeader>& headers) {
  const size_t row_bytes = sizeof(RowHeader) + hidden_ * sizeof(float);
  const int me = transport_.rank();
  send_bytes_.assign(transport_.world_size(), 0);
  for (int d : dest)
    if (d != me) send_bytes_[d] += row_bytes;
  std::vector<size_t> offset(transport_.world_size(), 0);
  for (size_t r = 1; r < offset.size(); ++r) offset[r] = offset[r - 1] + send_bytes_[r - 1];
  send_.resize(offset.back() + send_bytes_.back());
  std::vector<float*> values(dest.size(), nullptr);  // null for rows that stay on this rank
  for (size_t i = 0; i < dest.size(); ++i) {
    if (dest[i] == me) continue;
    uint8_t* at = send_.data() + offset[dest[i]];
    offset[dest[i]] += row_bytes;
    std::memcpy(at, &headers[i], sizeof(RowHeader));
    values[i] = reinterpret_cast<float*>(at + sizeof(RowHeader));  // 16-byte header: floats stay aligned
  }
  return values;
}

absl::Status ExpertExchange::Send(const std::string& what) {
  return transport_.AllToAllV(send_.data(), send_bytes_, recv_, recv_bytes_, what);
}

absl::Status ExpertExchange::Dispatch(const float* x, int64_t n_tokens, int64_t topk, const int32_t* expert_ids,
                                      const std::string& what, ReceivedRows& received) {
  const int world = transport_.world_size(), me = transport_.rank();
  const size_t row_bytes = sizeof(RowHeader) + hidden_ * sizeof(float);
  sent_slots_ = n_tokens * topk;
  std::vector<int> dest(sent_slots_);
  std::vector<RowHeader> headers(sent_slots_);
  for (int64_t slot = 0; slot < sent_slots_; ++slot) {
    dest[slot] = placement_.RankFor(expert_ids[slot], slot / topk, slot % topk);
    headers[slot] = RowHeader{me, static_cast<int32_t>(slot), expert_ids[slot], static_cast<int32_t>(hidden_)};
  }
  const std::vector<float*> values = Layout(dest, headers);
  for (int64_t slot = 0; slot < sent_slots_; ++slot)
    if (values[slot] != nullptr) std::memcpy(values[slot], x + (slot / topk) * hidden_, hidden_ * sizeof(float));
  RETURN_IF_ERROR(Send(what));
  const std::vector<uint8_t>& recv = recv_;
  if (recv.size() % row_bytes != 0) {
    return absl::DataLossError(absl::StrCat("rank ", me, ": dispatch (", what, ") received ", recv.size(),
                                            " bytes, not a whole number of ", row_bytes, "-byte rows"));
  }
  // This rank's own rows (read from x in place), then the received ones; grouped by expert,
  // keeping that order within an expert.
  std::vector<RowHeader> arrived;
  std::vector<const float*> arrived_x;
  for (int64_t slot = 0; slot < sent_slots_; ++slot) {
    if (dest[slot] != me) continue;
    arrived.push_back(headers[slot]);
    arrived_x.push_back(x + (slot / topk) * hidden_);
  }
  for (size_t at = 0; at + row_bytes <= recv.size(); at += row_bytes) {
    RowHeader h;
    std::memcpy(&h, recv.data() + at, sizeof h);
    arrived.push_back(h);
    arrived_x.push_back(reinterpret_cast<const float*>(recv.data() + at + sizeof(RowHeader)));
  }
  const int64_t rows = static_cast<int64_t>(arrived.size());
  std::vector<int64_t> count(n_experts_ + 1, 0);
  for (int64_t i = 0; i < rows; ++i) {
    const RowHeader& h = arrived[i];
    if (h.expert < 0 || h.expert >= n_experts_ || !placement_.Holds(me, h.expert) || h.hidden != hidden_ ||
        h.source_rank < 0 || h.source_rank >= world) {
      return absl::InternalError(absl::StrCat("rank ", me, ": dispatch (", what, ") received a row for expert ", h.expert,
                                              " from rank ", h.source_rank, " slot ", h.slot,
                                              ", which this rank does not serve"));
    }
    ++count[h.expert + 1];
  }
  received.expert_begin.assign(n_experts_ + 1, 0);
  for (int64_t e = 0; e < n_experts_; ++e) received.expert_begin[e + 1] = received.expert_begin[e] + count[e + 1];
  std::vector<int64_t> next(received.expert_begin.begin(), received.expert_begin.end() - 1);
  received.headers.resize(rows);
  received.x.resize(rows);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t at = next[arrived[i].expert]++;
    received.headers[at] = arrived[i];
    received.x[at] = arrived_x[i];
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
  own_out_.resize(own * hidden_);
  own_slots_.clear();
  for (int64_t i = 0; i < received.rows(); ++i) {
    if (dest[i] != me) continue;
    values[i] = &own_out_[own_slots_.size() * hidden_];
    own_slots_.push_back(received.headers[i].slot);
  }
  return values;
}

absl::Status ExpertExchange::Combine(const std::string& what, std::vector<const float*>& slot_rows) {
  const int me = transport_.rank();
  const size_t row_bytes = sizeof(RowHeader) + hidden_ * sizeof(float);
  RETURN_IF_ERROR(Send(what));
  const std::vector<uint8_t>& recv = recv_;
  const int64_t rows = static_cast<int64_t>(recv.size() / row_bytes) + static_cast<int64_t>(own_slots_.size());
  if (rows != sent_slots_ || recv.size() % row_bytes != 0) {
    return absl::InternalError(absl::StrCat("rank ", me, ": combine (", what, ") got ", recv.size(), " bytes back for ",
                                            sent_slots_, " dispatched rows"));
  }
  slot_rows.assign(sent_slots_, nullptr);
  for (size_t i = 0; i < own_slots_.size(); ++i) slot_rows[own_slots_[i]] = &own_out_[i * hidden_];
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
