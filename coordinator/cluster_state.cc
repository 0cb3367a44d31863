#include "coordinator/cluster_state.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "coordinator/outcome.h"
#include "core/status.h"
#include "core/prefix_hash.h"

namespace daedalus {

ClusterState::ClusterState(ModelConfig config, std::string model_name, CoordinatorOptions options, Metrics* metrics)
    : config_(std::move(config)),
      model_name_(std::move(model_name)),
      options_(std::move(options)),
      metrics_(metrics),
      registry_(options_.world_size, options_.kv_dtype),
      workers_(registry_.workers()),
      placement_(config_, PlacementOptions{options_.world_size, options_.ranks_per_node, options_.redundant_experts,
                                           options_.placement_load, options_.rebalance_gain}) {}

absl::StatusOr<ClusterState::Registration> ClusterState::Register(const v1::RegisterRequest& r, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  const bool can_join = serving_locked() && registry_.elastic();
  ASSIGN_OR_RETURN(Registry::Registered registered, registry_.Register(r, can_join, degraded_.empty(), now));
  if (registered.new_launch) {  // it replaces whatever ran before
    for (auto& link : registered.superseded) SendShutdown(*link, absl::StrCat("superseded by launch ", registry_.launch_id()));
    for (auto it = sequences_.begin(); it != sequences_.end();) {
      EndLocked(it++, "", absl::UnavailableError("the cluster's workers were relaunched"));
    }
    degraded_.clear();
    peers_lost_.clear();
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
    peers_lost_.clear();
    placement_.AddRank();
    const std::string what = absl::StrCat("worker rank ", rank, " (", w.info.host(), ", pid ", w.info.pid(), ") joined");
    SendReformLocked(rank, what);
    const bool moving = SendPlacementLocked(placement_.FillRank());
    std::fprintf(stderr, "daedalus: %s; the cluster serves with %d workers (generation %lld)%s\n", what.c_str(), rank + 1,
                 static_cast<long long>(registry_.generation()), moving ? "; experts move onto it in the background" : "");
  } else if (!degraded_.empty()) {  // a peer was lost meanwhile: this one must go too
    SendShutdown(*w.link, degraded_);
  }
  TryAdmitLocked();
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
      absl::StrCat("worker rank ", rank, " (", lost.info.host(), ", pid ", lost.info.pid(), ") lost: ", why);
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
  for (auto it = sequences_.begin(); it != sequences_.end();) {
    const bool here = it->second.rank == rank;
    EndLocked(it++, "", absl::UnavailableError(here ? what : absl::StrCat("cluster degraded: ", what)));
  }
  for (auto& w : workers_)
    if (w && w->link) SendShutdown(*w->link, what, /*reregister=*/true);
}

void ClusterState::ShrinkLocked(int rank, const std::string& what) {
  const int64_t orphaned = placement_.RemoveRank(rank);
  int64_t largest = 0;
  for (int r = 0; r < static_cast<int>(workers_.size()); ++r)
    if (r != rank) largest = std::max(largest, workers_[r]->info.kv_capacity_tokens());
  // The lost worker's sequences go back to the head of the queue; the others stay where they
  // are, under their worker's new rank.
  std::vector<uint64_t> requeued;
  for (auto it = sequences_.begin(); it != sequences_.end();) {
    auto here = it++;
    Sequence& s = here->second;
    if (s.rank != rank) {
      if (s.rank > rank) s.channel->Admitted(--s.rank);  // its worker's new rank
      continue;
    }
    const int32_t last = s.streamed.empty() ? -1 : s.streamed.back();
    if (static_cast<int64_t>(s.streamed.size()) >= s.request.max_new_tokens()) {
      EndLocked(here, "length", absl::OkStatus());  // its last token was streamed, its end was not
    } else if (!s.request.ignore_eos() && config_.eos_token_id && last == *config_.eos_token_id) {
      EndLocked(here, "stop", absl::OkStatus());
    } else if (const int64_t need = Reservation(s.request); need > largest) {
      EndLocked(here, "", absl::UnavailableError(absl::StrCat(what, "; no surviving worker's KV cache holds its ", need,
                                                                " tokens")));
    } else {  // its worker, and what was reserved there, go away with the registry's Remove below
      ClearPendingNamesLocked(s);
      s.rank = -1;
      s.reserved = 0;
      s.admission_deadline = std::max(s.admission_deadline, Clock::now() + options_.queue_timeout);
      requeued.push_back(s.id);
    }
  }
  queue_.insert(queue_.begin(), requeued.begin(), requeued.end());
  registry_.Remove(rank);
  peers_lost_.clear();
  const int world = static_cast<int>(workers_.size());
  SendReformLocked(-1, what);
  std::fprintf(stderr, "daedalus: %s; the cluster serves on with %d workers (generation %lld), %zu of its sequences continue on them%s\n",
               what.c_str(), world, static_cast<long long>(registry_.generation()), requeued.size(),
               orphaned == 0 ? "; every expert it held has a replica"
                             : absl::StrCat("; ", orphaned, " experts lost their only copy and are read from the checkpoint by survivors"
                                            " (--redundant-experts keeps replicas)").c_str());
  TryAdmitLocked();
}

void ClusterState::SendReformLocked(int except, const std::string& reason) {
  v1::CoordinatorMessage m;
  v1::Reform* reform = m.mutable_reform();
  reform->set_generation(registry_.generation());
  reform->set_world_size(static_cast<int32_t>(workers_.size()));
  *reform->mutable_placement() = placement_.placement();
  for (const auto& w : workers_) reform->add_data_plane_addresses(w->info.data_plane_address());
  reform->set_reason(reason);
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
  int64_t delivered = 0;
  for (const v1::TokenEvent& t : events.tokens()) {
    auto it = sequences_.find(t.sequence());
    if (it == sequences_.end() || it->second.rank != rank) continue;  // cancelled meanwhile
    Sequence& s = it->second;
    if (!s.got_token) {
      ClearPendingNamesLocked(s);
      s.channel->SetCachedTokens(t.cached_tokens());
    }
    v1::GeneratedToken g;
    g.set_token_id(t.token_id());
    if (s.request.logprobs() > 0) {
      g.set_logprob(t.logprob());
      for (int i = 0; i < t.top_ids_size() && i < t.top_logprobs_size(); ++i) {
        v1::TokenLogprob* top = g.add_top_logprobs();
        top->set_token_id(t.top_ids(i));
        top->set_logprob(t.top_logprobs(i));
      }
    }
    s.streamed.push_back(t.token_id());
    s.channel->Push(std::move(g));
    if (metrics_) {
      const double since = std::chrono::duration<double>(now - (s.got_token ? s.last_token : s.submitted)).count();
      s.got_token ? metrics_->ObserveItl(since) : metrics_->ObserveTtft(since);
    }
    s.got_token = true;
    s.last_token = now;
    ++delivered;
  }
  if (metrics_) metrics_->AddGeneratedTokens(delivered);
  for (const v1::FinishEvent& f : events.finished()) {
    auto it = sequences_.find(f.sequence());
    if (it == sequences_.end() || it->second.rank != rank) continue;
    EndLocked(it, f.reason(),
              f.reason() == "error" ? absl::InternalError(absl::StrCat("worker rank ", rank, ": ", f.error())) : absl::OkStatus());
  }
  placement_.AddLoad(events.expert_tokens());  // [moe layer in order][expert]
  TryAdmitLocked();
}

void ClusterState::OnHeartbeat(int hello_rank, int64_t generation, const v1::Heartbeat& heartbeat, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (Worker* w = registry_.Find(hello_rank, generation)) {
    w->health.OnHeartbeat(heartbeat.step(), heartbeat.running(), now);
    w->step_ms_median = heartbeat.step_ms_median();
    w->step_ms_max = heartbeat.step_ms_max();
  }
}

void ClusterState::OnPeersLost(int hello_rank, int64_t generation, const v1::PeersLost& lost) {
  std::lock_guard<std::mutex> lock(mu_);
  int reporter = -1;
  if (registry_.Find(hello_rank, generation, &reporter) == nullptr || lost.generation() != registry_.generation()) return;
  const int world = static_cast<int>(workers_.size());
  for (int r : lost.ranks())
    if (r >= 0 && r < world && r != reporter) peers_lost_[r].insert(reporter);
  for (const auto& [r, by] : peers_lost_) {
    if (static_cast<int>(by.size()) < world - 1) continue;
    const std::string why = absl::StrCat("every other worker's collective timed out waiting for it (rank ", reporter, ": ",
                                         lost.message(), ")");
    LoseLocked(r, why);  // a new generation: the other reports, of the old world, no longer count
    return;
  }
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
  registry_.ForgetStaleJoiner(now, options_.join_timeout);
  std::vector<uint64_t> expired;
  for (uint64_t id : queue_) {
    auto it = sequences_.find(id);
    if (it != sequences_.end() && now >= it->second.admission_deadline) expired.push_back(id);
  }
  for (uint64_t id : expired) {
    auto it = sequences_.find(id);
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(now - it->second.submitted);
    EndLocked(it, "",
              absl::ResourceExhaustedError(absl::StrCat("not admitted within ", waited.count(),
                                                        " ms: every worker's KV cache is full (", queue_.size() - 1,
                                                        " other requests waiting)")));
  }
}

absl::StatusOr<std::shared_ptr<RequestChannel>> ClusterState::Submit(const v1::GenerateRequest& request,
                                                                     Clock::time_point admission_deadline,
                                                                     Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto refuse = [&](absl::Status s) {
    if (metrics_) metrics_->CountRequest(OutcomeOf(s, ""));
    return s;
  };
  if (!serving_locked()) return refuse(absl::UnavailableError(state_detail_locked()));
  if (static_cast<int64_t>(queue_.size()) >= options_.max_queue) {
    return refuse(absl::ResourceExhaustedError(absl::StrCat("queue limit reached: ", queue_.size(),
                                                            " requests are waiting for admission (--max-queue ",
                                                            options_.max_queue, ")")));
  }
  const int64_t need = Reservation(request);
  int64_t largest = 0;
  for (const auto& w : workers_) largest = std::max(largest, w->info.kv_capacity_tokens());
  if (need > largest) {
    return refuse(absl::ResourceExhaustedError(absl::StrCat("prompt plus max_new_tokens needs ", need,
                                                            " KV cache tokens; the largest worker cache holds ", largest)));
  }
  const uint64_t id = next_sequence_++;
  Sequence s;
  s.id = id;
  s.request = request;
  s.channel = std::make_shared<RequestChannel>(id);
  s.submitted = now;
  s.admission_deadline = admission_deadline;
  if (std::any_of(workers_.begin(), workers_.end(), [](const auto& w) { return w->info.prefix_caching(); })) {
    const int64_t page = workers_[0]->info.kv_page_size();  // the same on every worker of a launch
    uint64_t name = kRootPageHash;
    for (int64_t p = 0; (p + 1) * page <= request.prompt_ids_size(); ++p) {
      name = PageHash(name, request.prompt_ids().data() + p * page, page);
      s.page_names.push_back(name);
    }
  }
  auto channel = s.channel;
  sequences_.emplace(id, std::move(s));
  queue_.push_back(id);
  TryAdmitLocked();
  return channel;
}

void ClusterState::Cancel(uint64_t sequence, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sequences_.find(sequence);
  if (it == sequences_.end()) return;
  if (it->second.rank >= 0) {
    auto& w = workers_[it->second.rank];
    if (w && w->link) {
      v1::CoordinatorMessage m;
      m.mutable_abort()->set_sequence(sequence);
      w->link->Send(m);
    }
  } else {
    std::erase(queue_, sequence);
  }
  EndLocked(it, reason,
            reason == "cancelled" ? absl::CancelledError("the client cancelled the request") : absl::OkStatus());
  TryAdmitLocked();
}

void ClusterState::ShutdownWorkers(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  shutting_down_ = true;
  for (auto& w : workers_)
    if (w && w->link) SendShutdown(*w->link, reason);
}

int64_t ClusterState::Reservation(const v1::GenerateRequest& request) const {
  // Every worker of a launch has the same page size; a sequence reserves whole pages.
  int64_t page = 1;
  for (const auto& w : workers_)
    if (w) page = std::max<int64_t>(page, w->info.kv_page_size());
  const int64_t length = request.prompt_ids_size() + request.max_new_tokens();
  return (length + page - 1) / page * page;
}

void ClusterState::TryAdmitLocked() {
  if (!serving_locked()) return;
  // First come, first served: the head waits for room rather than being overtaken.
  while (!queue_.empty()) {
    auto it = sequences_.find(queue_.front());
    if (it == sequences_.end()) {
      queue_.pop_front();
      continue;
    }
    Sequence& s = it->second;
    const int64_t need = Reservation(s.request);
    const int best = ChooseWorkerLocked(s, need);
    if (best < 0) return;
    Worker& w = *workers_[best];
    v1::CoordinatorMessage m;
    v1::Admit* admit = m.mutable_admit();
    admit->set_sequence(s.id);
    *admit->mutable_prompt_ids() = s.request.prompt_ids();
    admit->set_max_new_tokens(s.request.max_new_tokens());
    admit->set_temperature(s.request.sampling().temperature());
    admit->set_top_p(s.request.sampling().top_p() == 0 ? 1.0f : s.request.sampling().top_p());
    admit->set_top_k(s.request.sampling().top_k());
    admit->set_seed(s.request.sampling().seed());
    admit->set_ignore_eos(s.request.ignore_eos());
    admit->set_logprobs(s.request.logprobs());
    *admit->mutable_generated_ids() = {s.streamed.begin(), s.streamed.end()};
    queue_.pop_front();
    s.rank = best;
    s.reserved = need;
    w.kv_reserved += need;
    ++w.running;
    if (w.info.prefix_caching()) {  // its pages are being computed there from now on
      for (uint64_t name : s.page_names) ++w.prefix_pending[name];
      s.names_pending = true;
    }
    s.channel->Admitted(best);
    w.link->Send(m);  // a closed stream is noticed by its reader, which loses the worker
  }
}

int64_t ClusterState::CachedPrefixPagesLocked(const Worker& w, const Sequence& s) const {
  if (!w.info.prefix_caching() || s.page_names.empty()) return 0;
  // The last prompt token is always computed, so the pages usable are those before it.
  const int64_t usable = std::min<int64_t>(s.page_names.size(), (s.request.prompt_ids_size() - 1) / w.info.kv_page_size());
  int64_t n = 0;
  while (n < usable && (w.prefix_pages.contains(s.page_names[n]) || w.prefix_pending.contains(s.page_names[n]))) ++n;
  return n;
}

int ClusterState::ChooseWorkerLocked(const Sequence& s, int64_t need) {
  std::vector<ShardCandidate> candidates(workers_.size());
  for (size_t r = 0; r < workers_.size(); ++r) {
    const Worker& w = *workers_[r];
    candidates[r] = {w.info.kv_capacity_tokens() - w.kv_reserved, w.running, static_cast<int64_t>(w.prefix_pages.size()),
                     CachedPrefixPagesLocked(w, s)};
  }
  const ShardChoice choice = ChooseWorker(candidates, need, options_.prefix_route_slack);
  if (choice.by_prefix) ++workers_[choice.rank]->prefix_routed;
  return choice.rank;
}

void ClusterState::ClearPendingNamesLocked(Sequence& s) {
  if (!s.names_pending) return;
  s.names_pending = false;
  if (s.rank < 0 || static_cast<size_t>(s.rank) >= workers_.size() || !workers_[s.rank]) return;
  auto& pending = workers_[s.rank]->prefix_pending;
  for (uint64_t name : s.page_names) {
    const auto it = pending.find(name);
    if (it != pending.end() && --it->second == 0) pending.erase(it);
  }
}

void ClusterState::EndLocked(std::map<uint64_t, Sequence>::iterator it, const std::string& reason,
                             const absl::Status& status) {
  Sequence& s = it->second;
  ClearPendingNamesLocked(s);
  if (s.rank >= 0 && workers_.size() > static_cast<size_t>(s.rank) && workers_[s.rank]) {
    workers_[s.rank]->kv_reserved -= s.reserved;
    --workers_[s.rank]->running;
  }
  if (s.rank < 0) std::erase(queue_, s.id);
  if (metrics_) metrics_->CountRequest(OutcomeOf(status, reason));
  s.channel->Finish(reason, status);
  sequences_.erase(it);
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

bool ClusterState::serving() const {
  std::lock_guard<std::mutex> lock(mu_);
  return serving_locked();
}

int64_t ClusterState::generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registry_.generation();
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
  out.set_queued(static_cast<int64_t>(queue_.size()));
  if (metrics_) {
    out.set_generated_tokens(metrics_->generated_tokens());
    for (const auto& [k, v] : metrics_->requests_by_outcome()) (*out.mutable_requests_by_outcome())[k] = v;
  }
  return out;
}

}  // namespace daedalus
