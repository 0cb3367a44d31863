#include "cli/parallel.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/host_memory.h"
#include "core/model_config.h"
#include "core/status.h"
#include "routing/fault_injection.h"
#include "routing/mpi_transport.h"

namespace daedalus {

absl::StatusOr<std::unique_ptr<ExpertParallelRun>> ExpertParallelRun::Start(const std::string& model_dir,
                                                                           int redundant_experts,
                                                                           const std::string& placement_from,
                                                                           int ranks_per_node,
                                                                           double collective_timeout_s) {
  RETURN_IF_ERROR(InitMpi(nullptr, nullptr));
  auto run = std::unique_ptr<ExpertParallelRun>(new ExpertParallelRun());
  ASSIGN_OR_RETURN(run->transport_, MakeMpiTransport());
  if (const char* stall = std::getenv("DAEDALUS_FAULT_STALL")) {  // fault injection for the tests
    ASSIGN_OR_RETURN(run->transport_, MaybeStall(std::move(run->transport_), stall));
  }
  run->transport_->set_deadline(std::chrono::milliseconds(static_cast<int64_t>(collective_timeout_s * 1000)));
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::Load((std::filesystem::path(model_dir) / "config.json").string()));
  ExpertLoad load;
  if (!placement_from.empty()) {
    ASSIGN_OR_RETURN(load, ReadExpertLoad(placement_from, config.num_hidden_layers, config.n_routed_experts));
  }
  if (ranks_per_node == 0) ranks_per_node = LocalProcessCount();  // as many as the launcher started on this node
  ASSIGN_OR_RETURN(run->placements_, PlaceLayers(load, config.num_hidden_layers, config.n_routed_experts,
                                                 config.n_group, run->world_size(), ranks_per_node,
                                                 redundant_experts));
  return run;
}

absl::Status ExpertParallelRun::SumOverRanks(ExpertLoad& load) {
  std::vector<int64_t> flat;
  for (const auto& layer : load) flat.insert(flat.end(), layer.begin(), layer.end());
  RETURN_IF_ERROR(transport_->AllReduceSum(flat, "expert load"));
  size_t at = 0;
  for (auto& layer : load)
    for (auto& count : layer) count = flat[at++];
  return absl::OkStatus();
}

double ExpertParallelRun::WorstImbalance(const ExpertLoad& load) const {
  double worst = 1.0;
  for (size_t l = 0; l < load.size() && l < placements_.size(); ++l) {
    if (load[l].empty()) continue;
    worst = std::max(worst, placements_[l].Imbalance(std::vector<double>(load[l].begin(), load[l].end())));
  }
  return worst;
}

ExpertParallelRun::~ExpertParallelRun() {
  transport_.reset();
  FinalizeMpi();
}

absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> ExpertParallelRun::GatherLines(
    const std::vector<std::pair<int64_t, std::string>>& mine) {
  // Wire format: [int64 index][int64 length][bytes] per line, all sent to rank 0.
  std::vector<uint8_t> send;
  for (const auto& [index, line] : mine) {
    const int64_t header[2] = {index, static_cast<int64_t>(line.size())};
    const size_t at = send.size();
    send.resize(at + sizeof header + line.size());
    std::memcpy(send.data() + at, header, sizeof header);
    std::memcpy(send.data() + at + sizeof header, line.data(), line.size());
  }
  std::vector<size_t> send_bytes(world_size(), 0);
  send_bytes[0] = send.size();
  std::vector<uint8_t> recv;
  std::vector<size_t> recv_bytes;
  RETURN_IF_ERROR(transport_->AllToAllV(send.data(), send_bytes, recv, recv_bytes, "gathering results"));
  std::vector<std::pair<int64_t, std::string>> lines;
  for (size_t at = 0; at + 16 <= recv.size();) {
    int64_t header[2];
    std::memcpy(header, recv.data() + at, sizeof header);
    lines.emplace_back(header[0], std::string(reinterpret_cast<const char*>(recv.data() + at + 16), header[1]));
    at += 16 + header[1];
  }
  return lines;
}

void ExpertParallelRun::Abort(const absl::Status& status) {
  std::fprintf(stderr, "daedalus: error: %s (rank %d of %d, aborting all ranks)\n", std::string(status.message()).c_str(),
               rank(), world_size());
  std::fflush(stderr);
  AbortMpi(1);
}

}  // namespace daedalus
