#include "coordinator/cluster.h"

#include "absl/strings/str_cat.h"
#include "coordinator/outcome.h"
#include "core/status.h"

namespace daedalus {

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Create(const ModelConfig& config, const std::string& model_name,
                                                         const CoordinatorOptions& options, Metrics* metrics) {
  std::unique_ptr<Cluster> c(new Cluster);
  c->metrics_ = metrics;
  const int prefill_world_size = options.prefill_world_size, decode_world_size = options.decode_world_size;
  if (prefill_world_size == 0 && decode_world_size == 0) {
    CoordinatorOptions mixed = options;
    mixed.role = "mixed";
    c->group_ = std::make_unique<ClusterState>(config, model_name, mixed, metrics);
    return c;
  }
  if (prefill_world_size < 1 || decode_world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prefill/decode disaggregation needs at least one prefill and one decode worker (prefill world size ",
        prefill_world_size, ", decode world size ", decode_world_size, ")"));
  }
  CoordinatorOptions prefill = options, decode = options;
  prefill.role = "prefill";
  prefill.world_size = prefill_world_size;
  decode.role = "decode";
  decode.world_size = decode_world_size;
  c->group_ = std::make_unique<ClusterState>(config, model_name, prefill, metrics);
  c->decode_ = std::make_unique<ClusterState>(config, model_name, decode, metrics);
  return c;
}

ClusterState* Cluster::Group(const std::string& role) const {
  const std::string r = role.empty() ? "mixed" : role;
  if (!disaggregated()) return r == "mixed" ? group_.get() : nullptr;
  return r == "prefill" ? group_.get() : r == "decode" ? decode_.get() : nullptr;
}

absl::StatusOr<ClusterState::Registration> Cluster::Register(const v1::RegisterRequest& request, Clock::time_point now) {
  ClusterState* group = Group(request.role());
  if (group == nullptr) {
    const std::string role = request.role().empty() ? "mixed" : request.role();
    return absl::InvalidArgumentError(
        disaggregated()
            ? absl::StrCat("this coordinator serves prefill and decode workers apart: start the worker with --role prefill "
                           "or --role decode, not ", role)
            : absl::StrCat("a ", role, " worker needs a coordinator started with --prefill-world-size and --decode-world-size"));
  }
  return group->Register(request, now);
}

absl::StatusOr<v1::Assignment> Cluster::WaitAssignment(const std::string& role, int64_t generation, int rank,
                                                       Clock::time_point deadline) {
  ClusterState* group = Group(role);
  if (group == nullptr) return absl::InvalidArgumentError(absl::StrCat("no ", role, " workers in this cluster"));
  return group->WaitAssignment(generation, rank, deadline);
}

absl::Status Cluster::Attach(const std::string& role, int rank, int64_t generation, std::shared_ptr<WorkerLink> link,
                             Clock::time_point now) {
  ClusterState* group = Group(role);
  if (group == nullptr) return absl::InvalidArgumentError(absl::StrCat("no ", role, " workers in this cluster"));
  absl::Status s;
  WithHandOffs([&] { s = group->Attach(rank, generation, std::move(link), now); });
  return s;
}

void Cluster::Lose(const std::string& role, int rank, int64_t generation, const std::string& why) {
  WithHandOffs([&] {
    if (ClusterState* group = Group(role)) group->Lose(rank, generation, why);
  });
}

void Cluster::OnEvents(const std::string& role, int rank, int64_t generation, const v1::StepEvents& events,
                       Clock::time_point now) {
  WithHandOffs([&] {
    if (ClusterState* group = Group(role)) group->OnEvents(rank, generation, events, now);
  });
}

void Cluster::OnHeartbeat(const std::string& role, int rank, int64_t generation, const v1::Heartbeat& heartbeat,
                          Clock::time_point now) {
  if (ClusterState* group = Group(role)) group->OnHeartbeat(rank, generation, heartbeat, now);
}

void Cluster::OnPeersLost(const std::string& role, int rank, int64_t generation, const v1::PeersLost& lost,
                          Clock::time_point now) {
  WithHandOffs([&] {
    if (ClusterState* group = Group(role)) group->OnPeersLost(rank, generation, lost, now);
  });
}

void Cluster::CheckDeadlines(Clock::time_point now) {
  WithHandOffs([&] {
    group_->CheckDeadlines(now);
    if (decode_) decode_->CheckDeadlines(now);
  });
}

absl::StatusOr<std::shared_ptr<RequestChannel>> Cluster::Submit(const v1::GenerateRequest& request,
                                                                Clock::time_point admission_deadline, Clock::time_point now) {
  if (decode_ && !decode_->serving()) {  // the prefill group would take it, and no one could finish it
    absl::Status unavailable = absl::UnavailableError(absl::StrCat("decode workers: ", decode_->Status(now).detail()));
    if (metrics_) metrics_->CountRequest(OutcomeOf(unavailable, ""));
    return unavailable;
  }
  if (decode_) RETURN_IF_ERROR(decode_->CheckFits(request));  // before its first token, not after
  return group_->Submit(request, admission_deadline, now);
}

void Cluster::Cancel(uint64_t sequence, const std::string& reason) {
  WithHandOffs([&] {  // not while a hand-off is between the groups, where neither would find it
    group_->Cancel(sequence, reason);  // wherever it is now; the other group does not know it
    if (decode_) decode_->Cancel(sequence, reason);
  });
}

void Cluster::ShutdownWorkers(const std::string& reason) {
  group_->ShutdownWorkers(reason);
  if (decode_) decode_->ShutdownWorkers(reason);
}

bool Cluster::Rebalance() {
  const bool moved = group_->Rebalance();
  return (decode_ && decode_->Rebalance()) || moved;
}

bool Cluster::serving() const { return group_->serving() && (!decode_ || decode_->serving()); }

int64_t Cluster::LongestSequence() const { return (decode_ ? decode_ : group_)->LongestSequence(); }

std::string Cluster::state() const {
  const std::string a = group_->state();
  if (!decode_) return a;
  const std::string b = decode_->state();
  for (const char* worst : {"degraded", "forming"})
    if (a == worst || b == worst) return worst;
  return "serving";
}

v1::ClusterStatusResponse Cluster::Status(Clock::time_point now) const {
  if (!decode_) return group_->Status(now);
  const v1::ClusterStatusResponse prefill = group_->Status(now);
  v1::ClusterStatusResponse out = decode_->Status(now);
  out.set_state(state());
  std::string detail;
  for (const auto& [role, s] : {std::pair<const char*, const v1::ClusterStatusResponse*>{"prefill", &prefill}, {"decode", &out}})
    if (!s->detail().empty()) absl::StrAppend(&detail, detail.empty() ? "" : "; ", role, " workers: ", s->detail());
  out.set_detail(detail);
  out.set_world_size(prefill.world_size() + out.world_size());
  out.set_elastic(prefill.elastic() && out.elastic());
  out.set_queued(prefill.queued() + out.queued());
  auto decode_workers = std::move(*out.mutable_workers());
  *out.mutable_workers() = prefill.workers();
  for (auto& w : decode_workers) *out.add_workers() = std::move(w);
  return out;
}

void Cluster::WithHandOffs(const std::function<void()>& change) {
  std::lock_guard<std::mutex> lock(hand_off_mu_);
  change();
  if (!decode_) return;
  for (auto& h : group_->TakeHandOffs()) decode_->Accept(std::move(h), Clock::now());
  for (uint64_t sequence : decode_->TakeReleased()) group_->Release(sequence);
}

}  // namespace daedalus
