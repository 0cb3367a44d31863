#include "routing/dispatch.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace daedalus {

ExpertExchange::ExpertExchange(Transport& transport, const Placement& placement, int64_t hidden, int64_t n_experts)
    : transport_(transport), placement_(placement), hidden_(hidden), n_experts_(n_experts) {}

absl::Status ExpertExchange::Exchange(std::vector<std::vector<uint8_t>>& per_rank, const std::string& what,
                                      std::vector<uint8_t>& recv, std::vector<size_t>& recv_bytes) {
  std::vector<size_t> send_bytes(per_rank.size());
  size_t total = 0;
  for (size_t r = 0; r < per_rank.size(); ++r) total += send_bytes[r] = per_rank[r].size();
  std::vector<uint8_t> send(total);
  size_t offset = 0;
  for (const auto& part : per_rank) {
    if (!part.empty()) std::memcpy(send.data() + offset, part.data(), part.size());
    offset += part.size();
  }
  return transport_.AllToAllV(send.data(), send_bytes, recv, recv_bytes, what);
}

absl::Status ExpertExchange::Dispatch(const float* x, int64_t n_tokens, int64_t topk, const int32_t* expert_ids,
                                      const std::string& what, ReceivedRows& received) {
  const int world = transport_.world_size(), me = transport_.rank();
  const size_t row_bytes = sizeof(RowHeader) + hidden_ * sizeof(float);
  std::vector<std::vector<uint8_t>> per_rank(world);
  for (int64_t slot = 0; slot < n_tokens * topk; ++slot) {
    const int32_t expert = expert_ids[slot];
    const int dest = placement_.RankFor(expert, slot / topk, slot % topk);
    auto& buf = per_rank[dest];
    const RowHeader h{me, static_cast<int32_t>(slot), expert, static_cast<int32_t>(hidden_)};
    buf.resize(buf.size() + row_bytes);
    std::memcpy(buf.data() + buf.size() - row_bytes, &h, sizeof h);
    std::memcpy(buf.data() + buf.size() - row_bytes + sizeof h, x + (slot / topk) * hidden_, hidden_ * sizeof(float));
  }
  sent_slots_ = n_tokens * topk;
  std::vector<uint8_t> recv;
  std::vector<size_t> recv_bytes;
  RETURN_IF_ERROR(Exchange(per_rank, what, recv, recv_bytes));
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
  const int world = transport_.world_size(), me = transport_.rank();
  const size_t row_bytes = sizeof(RowHeader) + hidden_ * sizeof(float);
  std::vector<std::vector<uint8_t>> per_rank(world);
  for (int64_t i = 0; i < received.rows(); ++i) {
    const RowHeader& h = received.headers[i];
    auto& buf = per_rank[h.source_rank];
    buf.resize(buf.size() + row_bytes);
    std::memcpy(buf.data() + buf.size() - row_bytes, &h, sizeof h);
    std::memcpy(buf.data() + buf.size() - row_bytes + sizeof h, outputs + i * hidden_, hidden_ * sizeof(float));
  }
  std::vector<uint8_t> recv;
  std::vector<size_t> recv_bytes;
  RETURN_IF_ERROR(Exchange(per_rank, what, recv, recv_bytes));
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
