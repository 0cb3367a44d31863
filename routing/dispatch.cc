#include "routing/dispatch.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace daedalus {

ExpertExchange::ExpertExchange(Transport& transport, const Placement& placement, int64_t hidden, int64_t n_experts)
    : transport_(transport), placement_(placement), hidden_(hidden), n_experts_(n_experts) {}

template <typename Row>
absl::Status ExpertExchange::Exchange(const std::vector<int>& dest, Row row, const std::string& what) {
  const size_t row_bytes = sizeof(RowHeader) + hidden_ * sizeof(float);
  send_bytes_.assign(transport_.world_size(), 0);
  for (int d : dest) send_bytes_[d] += row_bytes;
  std::vector<size_t> offset(transport_.world_size(), 0);
  for (size_t r = 1; r < offset.size(); ++r) offset[r] = offset[r - 1] + send_bytes_[r - 1];
  send_.resize(offset.back() + send_bytes_.back());
  for (size_t i = 0; i < dest.size(); ++i) {
    uint8_t* at = send_.data() + offset[dest[i]];
    offset[dest[i]] += row_bytes;
    const auto [header, values] = row(i);
    std::memcpy(at, &header, sizeof header);
    std::memcpy(at + sizeof header, values, hidden_ * sizeof(float));
  }
  return transport_.AllToAllV(send_.data(), send_bytes_, recv_, recv_bytes_, what);
}

absl::Status ExpertExchange::Dispatch(const float* x, int64_t n_tokens, int64_t topk, const int32_t* expert_ids,
                                      const std::string& what, ReceivedRows& received) {
  const int world = transport_.world_size(), me = transport_.rank();
  const size_t row_bytes = sizeof(RowHeader) + hidden_ * sizeof(float);
  sent_slots_ = n_tokens * topk;
  std::vector<int> dest(sent_slots_);
  for (int64_t slot = 0; slot < sent_slots_; ++slot) dest[slot] = placement_.RankFor(expert_ids[slot], slot / topk, slot % topk);
  RETURN_IF_ERROR(Exchange(
      dest,
      [&](size_t slot) {
        return std::pair{RowHeader{me, static_cast<int32_t>(slot), expert_ids[slot], static_cast<int32_t>(hidden_)},
                         x + (slot / topk) * hidden_};
      },
      what));
  const std::vector<uint8_t>& recv = recv_;
  if (recv.size() % row_bytes != 0) {
    return absl::DataLossError(absl::StrCat("rank ", me, ": dispatch (", what, ") received ", recv.size(),
                                            " bytes, not a whole number of ", row_bytes, "-byte rows"));
  }
  // Group by expert, keeping arrival order (by source rank, then slot) within an expert.
  const int64_t rows = static_cast<int64_t>(recv.size() / row_bytes);
  std::vector<int64_t> count(n_experts_ + 1, 0);
  std::vector<RowHeader> arrived(rows);
  for (int64_t i = 0; i < rows; ++i) {
    std::memcpy(&arrived[i], recv.data() + i * row_bytes, sizeof(RowHeader));
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
  received.x.resize(rows * hidden_);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t at = next[arrived[i].expert]++;
    received.headers[at] = arrived[i];
    std::memcpy(&received.x[at * hidden_], recv.data() + i * row_bytes + sizeof(RowHeader), hidden_ * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status ExpertExchange::Combine(const ReceivedRows& received, const float* outputs, const std::string& what,
                                     float* slot_outputs) {
  const int me = transport_.rank();
  const size_t row_bytes = sizeof(RowHeader) + hidden_ * sizeof(float);
  std::vector<int> dest(received.rows());
  for (int64_t i = 0; i < received.rows(); ++i) dest[i] = received.headers[i].source_rank;
  RETURN_IF_ERROR(Exchange(dest, [&](size_t i) { return std::pair{received.headers[i], outputs + i * hidden_}; }, what));
  const std::vector<uint8_t>& recv = recv_;
  const int64_t rows = static_cast<int64_t>(recv.size() / row_bytes);
  if (rows != sent_slots_ || recv.size() % row_bytes != 0) {
    return absl::InternalError(absl::StrCat("rank ", me, ": combine (", what, ") got ", recv.size(), " bytes back for ",
                                            sent_slots_, " dispatched rows"));
  }
  std::vector<bool> seen(sent_slots_, false);
  for (int64_t i = 0; i < rows; ++i) {
    RowHeader h;
    std::memcpy(&h, recv.data() + i * row_bytes, sizeof h);
    if (h.source_rank != me || h.slot < 0 || h.slot >= sent_slots_ || seen[h.slot]) {
      return absl::InternalError(absl::StrCat("rank ", me, ": combine (", what, ") got a row for rank ", h.source_rank,
                                              " slot ", h.slot, " (expert ", h.expert, ") that this rank did not send"));
    }
    seen[h.slot] = true;
    std::memcpy(slot_outputs + h.slot * hidden_, recv.data() + i * row_bytes + sizeof h, hidden_ * sizeof(float));
  }
  return absl::OkStatus();
}

}  // namespace daedalus
