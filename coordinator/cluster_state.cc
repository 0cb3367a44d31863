#include "coordinator/cluster_state.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "coordinator/outcome.h"
#include "core/status.h"

namespace daedalus {

ClusterState::ClusterState(ModelConfig config, std::string model_name, CoordinatorOptions options, Metrics* metrics)
    : config_(std::move(config)),
      model_name_(std::move(model_name)),
      options_(std::move(options)),
      metrics_(metrics),
      registry_(options_.world_size, options_.kv_dtype),
      workers_(registry_.workers()),
      placement_(config_, PlacementOptions{options_.world_size, options_.ranks_per_node, options_.redundant_experts,
                                           options_.placement_load, options_.rebalance_gain}),
      admission_(config_,
                 Admission::Options{options_.max_queue, options_.queue_timeout, options_.prefix_route_slack, options_.role},
                 metrics_, workers_) {}

absl::StatusOr<ClusterState::Registration> ClusterState::Register(const v1::RegisterRequest& r, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  const bool can_join = serving_locked() && registry_.elastic();
  ASSIGN_OR_RETURN(Registry::Registered registered, registry_.Register(r, can_join, degraded_.empty(), now));
  if (registered.new_launch) {  // it replaces whatever ran before
    for (auto& link : registered.superseded) SendShutdown(*link, absl::StrCat("superseded by launch ", registry_.launch_id()));
    const absl::Status relaunched = absl::UnavailableError("the cluster's workers were relaunched");
    admission_.EndAll(-1, relaunched, relaunched);
    degraded_.clear();
    ClearPeerReportsLocked();
    placement_.Reset(registry_.launch_world());
  }
  formed_.notify_all();
  return Registration{registered.generation, registered.rank};
}

absl::StatusOr<v1::Assignment> ClusterState::WaitAssignment(int64_t generation, int rank, Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  const bool formed = formed_.wait_until(lock, deadline, [&] {
    return registry_.Formed(generation) || generation != registry_.generation();
  });
  if (!registry_.Formed(generation)) {
    if (formed) return absl::AbortedError("a newer launch replaced this one");
    int n = 0;
    for (const auto& w : workers_) n += w.has_value();
    return absl::UnavailableError(absl::StrCat("only ", n, " of ", registry_.launch_world(), " workers registered in time"));
  }
  v1::Assignment a = registry_.Assignment(generation, rank);
  *a.mutable_placement() = placement_.placement();
  if (a.join()) {  // it holds no expert yet
    for (int64_t l = 0; l < a.placement().layers_size(); ++l) {
      if (config_.is_moe_layer(l)) a.mutable_placement()->mutable_layers(static_cast<int>(l))->add_experts_on();
    }
  }
  a.set_heartbeat_interval_ms(static_cast<int32_t>(options_.heartbeat_interval.count()));
  return a;
}

absl::Status ClusterState::Attach(int rank, int64_t generation, std::shared_ptr<WorkerLink> link, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Registry::Attached attached, registry_.Attach(rank, generation, std::move(link), now));
  Worker& w = *workers_[rank];
  if (attached == Registry::Attached::kJoined) {
    // The joiner has its weights: the world grew by it, and experts move onto it next.
    ClearPeerReportsLocked();
    placement_.AddRank();
    const std::string what = absl::StrCat(role_prefix(), "worker rank ", rank, " (", w.info.host(), ", pid ", w.info.pid(), ") joined");
    SendReformLocked(rank, what, /*join=*/true);
    const bool moving = SendPlacementLocked(placement_.FillRank());
    std::fprintf(stderr, "daedalus: %s; the cluster serves with %d workers (generation %lld)%s\n", what.c_str(), rank + 1,
                 static_cast<long long>(registry_.generation()), moving ? "; experts move onto it in the background" : "");
  } else if (!degraded_.empty()) {  // a peer was lost meanwhile: this one must go too
    SendShutdown(*w.link, degraded_);
  }
  AdmitLocked();
  return absl::OkStatus();
}

void ClusterState::Lose(int hello_rank, int64_t generation, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  int rank = -1;
  Worker* w = registry_.Find(hello_rank, generation, &rank);
  if (w == nullptr || w->state == WorkerState::kLost) return;
  LoseLocked(rank, why);
}

void ClusterState::LoseLocked(int rank, const std::string& why) {
  Worker& lost = *workers_[rank];
  const std::string what =
      absl::StrCat(role_prefix(), "worker rank ", rank, " (", lost.info.host(), ", pid ", lost.info.pid(), ") lost: ", why);
  if (serving_locked() && registry_.elastic() && workers_.size() > 1 && !shutting_down_) {
    // Alive after all (silent, stalled)? It must not come back into this world.
    if (lost.link) SendShutdown(*lost.link, absl::StrCat("removed from the cluster: ", what));
    ShrinkLocked(rank, what);
    return;
  }
  lost.state = WorkerState::kLost;
  lost.link.reset();
  if (degraded_.empty() && !shutting_down_) {
    const std::string plane = lost.info.transport().empty() ? "mpi" : lost.info.transport();
    const std::string hint = plane != "ucx" ? absl::StrCat(" (the ", plane, " data plane is a fixed world: elasticity needs --transport ucx)")
                             : !registry_.elastic()    ? " (GPU workers do not re-form a running cluster yet)"
                             : workers_.size() == 1 ? " (no other worker to serve on)"
                                                    : "";
    std::fprintf(stderr, "daedalus: %s; every request fails and the workers re-form from a relaunch%s\n", what.c_str(),
                 hint.c_str());
  }
  if (degraded_.empty()) degraded_ = what;
  // The data plane spans every worker, so no sequence can go on: end them all, and stop the
  // survivors so the launcher can start the whole set again.
  admission_.EndAll(rank, absl::UnavailableError(what), absl::UnavailableError(absl::StrCat("cluster degraded: ", what)));
  for (auto& w : workers_)
    if (w && w->link) SendShutdown(*w->link, what, /*reregister=*/true);
}

void ClusterState::ShrinkLocked(int rank, const std::string& what) {
  const int64_t orphaned = placement_.RemoveRank(rank);
  // The lost worker's sequences go back to the head of the queue; the others stay where they
  // are, under their worker's new rank.
  const int64_t requeued = admission_.Requeue(rank, what, Clock::now());
  registry_.Remove(rank);
  ClearPeerReportsLocked();
  const int world = static_cast<int>(workers_.size());
  SendReformLocked(-1, what);
  std::fprintf(stderr, "daedalus: %s; the cluster serves on with %d workers (generation %lld), %lld of its sequences continue on them%s\n",
               what.c_str(), world, static_cast<long long>(registry_.generation()), static_cast<long long>(requeued),
               orphaned == 0 ? "; every expert it held has a replica"
                             : absl::StrCat("; ", orphaned, " experts lost their only copy and are read from the checkpoint by survivors"
                                            " (--redundant-experts keeps replicas)").c_str());
  AdmitLocked();
}

void ClusterState::SendReformLocked(int except, const std::string& reason, bool join) {
  v1::CoordinatorMessage m;
  v1::Reform* reform = m.mutable_reform();
  reform->set_generation(registry_.generation());
  reform->set_world_size(static_cast<int32_t>(workers_.size()));
  *reform->mutable_placement() = placement_.placement();
  for (const auto& w : workers_) reform->add_data_plane_addresses(w->info.data_plane_address());
  reform->set_reason(reason);
  reform->set_join(join);
  for (int r = 0; r < static_cast<int>(workers_.size()); ++r) {
    if (r == except || !workers_[r]->link) continue;
    reform->set_rank(r);
    workers_[r]->link->Send(m);
  }
}

void ClusterState::OnEvents(int hello_rank, int64_t generation, const v1::StepEvents& events, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  int rank = -1;
  Worker* found = registry_.Find(hello_rank, generation, &rank);
  if (found == nullptr) return;
  Worker& w = *found;
  w.health.Heard(now, events.tokens_size() > 0 || events.finished_size() > 0);  // events come from steps
  // Names first: a sequence's first token below ends its pending names, which these replace.
  for (uint64_t name : events.prefix_pages_removed()) w.prefix_pages.erase(name);
  for (uint64_t name : events.prefix_pages_added()) w.prefix_pages.insert(name);
  w.prompt_tokens = std::max(w.prompt_tokens, events.prompt_tokens());
  w.prompt_tokens_cached = std::max(w.prompt_tokens_cached, events.prompt_tokens_cached());
  w.kv_evictions = std::max(w.kv_evictions, events.kv_evictions());
  w.preemptions = std::max(w.preemptions, events.preemptions());
  w.kv_held_tokens = events.kv_used_tokens();
  admission_.OnEvents(rank, events, now);
  placement_.AddLoad(events.expert_tokens());  // [moe layer in order][expert]
  AdmitLocked();
}

void ClusterState::OnHeartbeat(int hello_rank, int64_t generation, const v1::Heartbeat& heartbeat, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (Worker* w = registry_.Find(hello_rank, generation)) {
    w->health.OnHeartbeat(heartbeat.step(), heartbeat.running(), now);
    w->step_ms_median = heartbeat.step_ms_median();
    w->step_ms_max = heartbeat.step_ms_max();
    w->kv_held_tokens = heartbeat.kv_used_tokens();
  }
}

void ClusterState::OnPeersLost(int hello_rank, int64_t generation, const v1::PeersLost& lost, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  int reporter = -1;
  if (registry_.Find(hello_rank, generation, &reporter) == nullptr || lost.generation() != registry_.generation()) return;
  const int world = static_cast<int>(workers_.size());
  reporters_.insert(reporter);
  for (int r : lost.ranks())
    if (r >= 0 && r < world && r != reporter) peers_lost_[r].insert(reporter);
  for (const auto& [r, by] : peers_lost_) {
    if (static_cast<int>(by.size()) < world - 1) continue;
    const std::string why = absl::StrCat("every other worker's collective timed out waiting for it (rank ", reporter, ": ",
                                         lost.message(), ")");
    LoseLocked(r, why);  // a new generation: the other reports, of the old world, no longer count
    return;
  }
  // Several hung together: the named ranks that have not reported, each named by every rank
  // that has, and nobody left out.
  std::set<int> hung;
  for (const auto& [r, by] : peers_lost_) {
    if (reporters_.contains(r)) continue;
    if (!std::includes(by.begin(), by.end(), reporters_.begin(), reporters_.end())) {
      hung.clear();
      break;
    }
    hung.insert(r);
  }
  if (hung.empty() || static_cast<int>(hung.size() + reporters_.size()) != world) {
    suspects_.clear();
  } else if (hung != suspects_) {
    suspects_ = std::move(hung);
    suspected_since_ = now;
  }
}

void ClusterState::ClearPeerReportsLocked() {
  peers_lost_.clear();
  reporters_.clear();
  suspects_.clear();
}

void ClusterState::CheckDeadlines(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  const WorkerHealth::Limits limits{options_.heartbeat_timeout, options_.stall_timeout};
  std::vector<std::tuple<int, int64_t, std::string>> lost;  // by Hello: losing one renumbers the others
  for (auto& w : workers_) {
    if (!w || w->state != WorkerState::kReady) continue;
    if (std::string why = w->health.Check(w->running, now, limits); !why.empty()) {
      lost.emplace_back(w->hello_rank, w->hello_generation, why);
    }
  }
  for (const auto& [hello_rank, hello_generation, why] : lost) {
    int rank = -1;
    Worker* w = registry_.Find(hello_rank, hello_generation, &rank);
    if (w != nullptr && w->state == WorkerState::kReady) LoseLocked(rank, why);
  }
  if (!suspects_.empty() && now - suspected_since_ >= options_.heartbeat_timeout) {
    const std::set<int> hung = suspects_;
    const std::string why = absl::StrCat("hung with ", hung.size() - 1, " other rank(s): every other worker's collective timed out waiting "
                                         "for them, and they did not report");
    for (auto it = hung.rbegin(); it != hung.rend(); ++it) LoseLocked(*it, why);  // highest first: the lower keep their ranks
  }
  registry_.ForgetStaleJoiner(now, options_.join_timeout);
  admission_.ExpireQueue(now);
}

absl::StatusOr<std::shared_ptr<RequestChannel>> ClusterState::Submit(const v1::GenerateRequest& request,
                                                                     Clock::time_point admission_deadline,
                                                                     Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!serving_locked()) {
    absl::Status unavailable = absl::UnavailableError(state_detail_locked());
    if (metrics_) metrics_->CountRequest(OutcomeOf(unavailable, ""));
    return unavailable;
  }
  auto channel = admission_.Submit(request, admission_deadline, now);
  if (channel.ok()) AdmitLocked();
  return channel;
}

void ClusterState::Cancel(uint64_t sequence, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  admission_.Cancel(sequence, reason);
  AdmitLocked();
}

void ClusterState::ShutdownWorkers(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  shutting_down_ = true;
  for (auto& w : workers_)
    if (w && w->link) SendShutdown(*w->link, reason);
}

void ClusterState::AdmitLocked() {
  if (serving_locked()) admission_.AdmitWaiting();
}

bool ClusterState::Rebalance() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!serving_locked()) return false;
  // GPU workers place their experts once, at formation: they are never sent an update.
  for (const auto& w : workers_)
    if (w->info.device() != "cpu" && !w->info.device().empty()) return false;
  return SendPlacementLocked(placement_.Rebalance());
}

bool ClusterState::SendPlacementLocked(std::optional<v1::PlacementUpdate> update) {
  if (!update) return false;
  v1::CoordinatorMessage m;
  *m.mutable_placement_update() = std::move(*update);
  for (auto& w : workers_) w->link->Send(m);
  return true;
}

void ClusterState::SendShutdown(WorkerLink& link, const std::string& reason, bool reregister) {
  v1::CoordinatorMessage m;
  m.mutable_shutdown()->set_reason(reason);
  m.mutable_shutdown()->set_reregister(reregister);
  link.Send(m);
}

std::vector<Admission::HandOff> ClusterState::TakeHandOffs() {
  std::lock_guard<std::mutex> lock(mu_);
  return admission_.TakeHandOffs();
}

void ClusterState::Release(uint64_t sequence) {
  std::lock_guard<std::mutex> lock(mu_);
  admission_.Release(sequence);
  AdmitLocked();
}

void ClusterState::Accept(Admission::HandOff hand_off, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  admission_.Accept(std::move(hand_off), now);
  AdmitLocked();
}

absl::Status ClusterState::CheckFits(const v1::GenerateRequest& request) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status s = admission_.Fits(request);
  if (!s.ok() && metrics_) metrics_->CountRequest(OutcomeOf(s, ""));
  return s;
}

std::vector<uint64_t> ClusterState::TakeReleased() {
  std::lock_guard<std::mutex> lock(mu_);
  return admission_.TakeReleased();
}

bool ClusterState::serving() const {
  std::lock_guard<std::mutex> lock(mu_);
  return serving_locked();
}

int64_t ClusterState::generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registry_.generation();
}

int64_t ClusterState::LongestSequence() const {
  std::lock_guard<std::mutex> lock(mu_);
  return admission_.LongestSequence();
}

std::string ClusterState::state() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !degraded_.empty() ? "degraded" : serving_locked() ? "serving" : "forming";
}

bool ClusterState::serving_locked() const { return degraded_.empty() && registry_.all_ready(); }

std::string ClusterState::state_detail_locked() const {
  if (!degraded_.empty()) {
    return absl::StrCat("cluster degraded: ", degraded_, "; waiting for the workers to be restarted and register again");
  }
  int registered = 0, ready = 0;
  for (const auto& w : workers_) {
    registered += w.has_value();
    ready += w && w->state == WorkerState::kReady;
  }
  return absl::StrCat("cluster forming: ", registered, " of ", registry_.launch_world(), " workers registered, ", ready,
                      " ready");
}

v1::ClusterStatusResponse ClusterState::Status(Clock::time_point now) const {
  std::lock_guard<std::mutex> lock(mu_);
  v1::ClusterStatusResponse out;
  out.set_state(!degraded_.empty() ? "degraded" : serving_locked() ? "serving" : "forming");
  if (!serving_locked()) out.set_detail(state_detail_locked());
  out.set_world_size(static_cast<int32_t>(workers_.size()));
  out.set_generation(registry_.generation());
  out.set_elastic(registry_.elastic());
  out.set_model(model_name_);
  out.set_vocab_size(config_.vocab_size);
  out.set_max_position_embeddings(config_.max_position_embeddings);
  out.set_placement_version(placement_.version());
  out.set_imbalance(placement_.Imbalance());
  for (const auto& w : workers_) {
    if (!w) continue;
    v1::WorkerStatus* ws = out.add_workers();
    ws->set_rank(w->info.rank());
    ws->set_host(w->info.host());
    ws->set_pid(w->info.pid());
    ws->set_device(w->info.device());
    ws->set_state(w->state == WorkerState::kLoading ? "loading" : w->state == WorkerState::kReady ? "ready" : "lost");
    ws->set_kv_capacity_tokens(w->info.kv_capacity_tokens());
    ws->set_kv_dtype(w->info.kv_dtype().empty() ? "bf16" : w->info.kv_dtype());
    ws->set_kv_used_tokens(w->kv_reserved);
    ws->set_running(w->running);
    ws->set_last_heartbeat_age_s(std::chrono::duration<double>(now - w->health.last_heard()).count());
    ws->set_prefix_caching(w->info.prefix_caching());
    ws->set_prompt_tokens(w->prompt_tokens);
    ws->set_prompt_tokens_cached(w->prompt_tokens_cached);
    ws->set_cached_pages(static_cast<int64_t>(w->prefix_pages.size()));
    ws->set_kv_evictions(w->kv_evictions);
    ws->set_preemptions(w->preemptions);
    ws->set_prefix_routed(w->prefix_routed);
    ws->set_step_ms_median(w->step_ms_median);
    ws->set_step_ms_max(w->step_ms_max);
    ws->set_role(options_.role);
    ws->set_kv_held_tokens(w->kv_held_tokens);
  }
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    if (!config_.is_moe_layer(l)) continue;
    v1::LayerPlacement* lp = out.add_layers();
    lp->set_layer(static_cast<int32_t>(l));
    const v1::Placement& placed = placement_.placement();
    if (l < placed.layers_size()) {
      for (const auto& on : placed.layers(l).experts_on()) *lp->add_experts_on()->mutable_experts() = on.experts();
    }
    *lp->mutable_expert_tokens() = {placement_.measured()[l].begin(), placement_.measured()[l].end()};
  }
  out.set_queued(admission_.queued());
  if (metrics_) {
    out.set_generated_tokens(metrics_->generated_tokens());
    for (const auto& [k, v] : metrics_->requests_by_outcome()) (*out.mutable_requests_by_outcome())[k] = v;
  }
  return out;
}

}  // namespace daedalus
