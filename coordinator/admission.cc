#include "coordinator/admission.h"

#include <algorithm>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "coordinator/outcome.h"
#include "coordinator/sharding.h"
#include "core/prefix_hash.h"

namespace daedalus {

Admission::Admission(const ModelConfig& config, Options options, Metrics* metrics,
                     std::vector<std::optional<Worker>>& workers)
    : config_(config), options_(options), metrics_(metrics), workers_(workers) {}

absl::StatusOr<std::shared_ptr<RequestChannel>> Admission::Submit(const v1::GenerateRequest& request,
                                                                  Clock::time_point admission_deadline,
                                                                  Clock::time_point now) {
  auto refuse = [&](absl::Status s) {
    if (metrics_) metrics_->CountRequest(OutcomeOf(s, ""));
    return s;
  };
  if (static_cast<int64_t>(queue_.size()) >= options_.max_queue) {
    return refuse(absl::ResourceExhaustedError(absl::StrCat("queue limit reached: ", queue_.size(),
                                                            " requests are waiting for admission (--max-queue ",
                                                            options_.max_queue, ")")));
  }
  if (absl::Status fits = Fits(request); !fits.ok()) return refuse(fits);
  const uint64_t id = next_sequence_++;
  Sequence s;
  s.id = id;
  s.request = request;
  s.channel = std::make_shared<RequestChannel>(id);
  s.submitted = now;
  s.admission_deadline = admission_deadline;
  if (std::any_of(workers_.begin(), workers_.end(), [](const auto& w) { return w && w->info.prefix_caching(); })) {
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
  return channel;
}

void Admission::AdmitWaiting() {
  // First come, first served: the head waits for room rather than being overtaken.
  while (!queue_.empty()) {
    auto it = sequences_.find(queue_.front());
    if (it == sequences_.end()) {
      queue_.pop_front();
      continue;
    }
    Sequence& s = it->second;
    const int64_t need = Reservation(s.request);
    const int best = Choose(s, need);
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
    admit->set_hand_off(options_.role == "prefill");
    if (s.kv_source) *admit->mutable_kv_source() = *s.kv_source;
    if (metrics_ && options_.role != "mixed") metrics_->CountAdmission(options_.role);
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

void Admission::Cancel(uint64_t sequence, const std::string& reason) {
  auto it = sequences_.find(sequence);
  if (it == sequences_.end()) return;
  if (it->second.rank >= 0) {
    auto& w = workers_[it->second.rank];
    if (w && w->link) {
      v1::CoordinatorMessage m;
      m.mutable_abort()->set_sequence(sequence);
      w->link->Send(m);
    }
  }
  End(it, reason, reason == "cancelled" ? absl::CancelledError("the client cancelled the request") : absl::OkStatus());
}

void Admission::OnEvents(int rank, const v1::StepEvents& events, Clock::time_point now) {
  int64_t delivered = 0;
  for (const v1::TokenEvent& t : events.tokens()) {
    auto it = sequences_.find(t.sequence());
    if (it == sequences_.end() || it->second.rank != rank) continue;  // cancelled meanwhile
    Sequence& s = it->second;
    if (!s.got_token) {
      ClearPendingNames(s);
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
    End(it, f.reason(),
        f.reason() == "error" ? absl::InternalError(absl::StrCat("worker rank ", rank, ": ", f.error())) : absl::OkStatus());
  }
  for (const v1::KvReady& ready : events.kv_ready()) {
    auto it = sequences_.find(ready.sequence());
    if (it != sequences_.end() && it->second.rank == rank) StartHandOff(it, ready);
  }
  for (const v1::KvReceived& r : events.kv_received()) {
    auto it = sequences_.find(r.sequence());
    if (it == sequences_.end() || it->second.rank != rank) continue;
    if (metrics_ && it->second.kv_source) metrics_->ObserveKvTransfer(r.ok(), r.bytes(), r.seconds());
    DropSource(it->second);
  }
}

void Admission::StartHandOff(Sequences::iterator it, const v1::KvReady& ready) {
  Sequence& s = it->second;
  Worker& w = *workers_[s.rank];
  HandOff h{s.id, std::move(s.request), std::move(s.channel), std::move(s.streamed), s.submitted, s.admission_deadline,
            s.last_token, {}};
  h.source.set_address(w.info.kv_transfer_address());
  h.source.set_pool_key(w.info.kv_pool_key());
  *h.source.mutable_pages() = ready.pages();
  h.source.set_tokens(ready.tokens());
  h.source.set_page_size(ready.page_size());
  h.source.set_row_bytes(ready.row_bytes());
  ClearPendingNames(s);
  held_[s.id] = Held{s.rank, s.reserved};
  --w.running;  // it runs there no more; its pages stay reserved until Release
  hand_offs_.push_back(std::move(h));
  sequences_.erase(it);
}

std::vector<Admission::HandOff> Admission::TakeHandOffs() {
  std::vector<HandOff> out;
  out.swap(hand_offs_);
  return out;
}

void Admission::Release(uint64_t sequence) {
  const auto it = held_.find(sequence);
  if (it == held_.end()) return;
  const Held held = it->second;
  held_.erase(it);
  if (held.rank < 0 || static_cast<size_t>(held.rank) >= workers_.size() || !workers_[held.rank]) return;
  Worker& w = *workers_[held.rank];
  w.kv_reserved -= held.reserved;
  if (!w.link) return;
  v1::CoordinatorMessage m;
  m.mutable_release()->set_sequence(sequence);
  w.link->Send(m);
}

void Admission::Accept(HandOff h, Clock::time_point now) {
  if (const absl::Status s = Fits(h.request); !s.ok()) {
    if (metrics_) metrics_->CountRequest(OutcomeOf(s, ""));
    h.channel->Finish("", s);
    released_.push_back(h.id);
    return;
  }
  Sequence s;
  s.id = h.id;
  s.request = std::move(h.request);
  s.channel = std::move(h.channel);
  s.streamed = std::move(h.streamed);
  s.got_token = !s.streamed.empty();
  s.submitted = h.submitted;
  s.last_token = h.last_token;
  s.admission_deadline = std::max(h.admission_deadline, now + options_.queue_timeout);
  s.kv_source = std::move(h.source);
  const uint64_t id = s.id;
  sequences_.emplace(id, std::move(s));
  queue_.push_back(id);
}

std::vector<uint64_t> Admission::TakeReleased() {
  std::vector<uint64_t> out;
  out.swap(released_);
  return out;
}

void Admission::DropSource(Sequence& s) {
  if (!s.kv_source) return;
  s.kv_source.reset();
  released_.push_back(s.id);
}

int64_t Admission::Requeue(int rank, const std::string& what, Clock::time_point now) {
  const int64_t largest = LargestCache(rank);
  std::vector<uint64_t> requeued;
  for (auto it = held_.begin(); it != held_.end();) {  // pages held there are gone with it
    if (it->second.rank == rank) {
      it = held_.erase(it);
      continue;
    }
    if (it->second.rank > rank) --it->second.rank;
    ++it;
  }
  for (auto it = sequences_.begin(); it != sequences_.end();) {
    auto here = it++;
    Sequence& s = here->second;
    if (s.rank != rank) {
      if (s.rank > rank) s.channel->Admitted(--s.rank);  // its worker's new rank
      continue;
    }
    const int32_t last = s.streamed.empty() ? -1 : s.streamed.back();
    if (static_cast<int64_t>(s.streamed.size()) >= s.request.max_new_tokens()) {
      End(here, "length", absl::OkStatus());  // its last token was streamed, its end was not
    } else if (!s.request.ignore_eos() && config_.eos_token_id && last == *config_.eos_token_id) {
      End(here, "stop", absl::OkStatus());
    } else if (const int64_t need = Reservation(s.request); need > largest) {
      End(here, "", absl::UnavailableError(absl::StrCat(what, "; no surviving worker's KV cache holds its ", need, " tokens")));
    } else {  // its worker, and what was reserved there, go away with the registry's Remove
      ClearPendingNames(s);
      s.rank = -1;
      s.reserved = 0;
      s.admission_deadline = std::max(s.admission_deadline, now + options_.queue_timeout);
      requeued.push_back(s.id);
    }
  }
  queue_.insert(queue_.begin(), requeued.begin(), requeued.end());
  return static_cast<int64_t>(requeued.size());
}

void Admission::EndAll(int rank, const absl::Status& on_rank, const absl::Status& others) {
  held_.clear();  // the workers start again, without their pages
  for (auto it = sequences_.begin(); it != sequences_.end();) {
    const bool here = rank >= 0 && it->second.rank == rank;
    End(it++, "", here ? on_rank : others);
  }
}

void Admission::ExpireQueue(Clock::time_point now) {
  std::vector<uint64_t> expired;
  for (uint64_t id : queue_) {
    auto it = sequences_.find(id);
    if (it != sequences_.end() && now >= it->second.admission_deadline) expired.push_back(id);
  }
  for (uint64_t id : expired) {
    auto it = sequences_.find(id);
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(now - it->second.submitted);
    End(it, "",
        absl::ResourceExhaustedError(absl::StrCat("not admitted within ", waited.count(),
                                                  " ms: every worker's KV cache is full (", queue_.size() - 1,
                                                  " other requests waiting)")));
  }
}

int64_t Admission::Reservation(const v1::GenerateRequest& request) const {
  // A sequence reserves whole pages.
  const int64_t page = PageSize();
  // A prefill worker holds the prompt's pages (and computes one token past it).
  const int64_t length = request.prompt_ids_size() + (options_.role == "prefill" ? 1 : request.max_new_tokens());
  return (length + page - 1) / page * page;
}

namespace {
constexpr char kNeverFits[] = "type.daedalus/never-fits";
}  // namespace

absl::Status Admission::Fits(const v1::GenerateRequest& request) const {
  const int64_t need = Reservation(request), largest = LargestCache(-1);
  if (need <= largest) return absl::OkStatus();
  absl::Status s = absl::ResourceExhaustedError(
      absl::StrCat(options_.role == "prefill" ? "the prompt" : "prompt plus max_new_tokens", " needs ", need,
                   " KV cache tokens; the largest ", options_.role == "mixed" ? "" : options_.role + " ",
                   "worker cache holds ", largest));
  s.SetPayload(kNeverFits, absl::Cord());
  return s;
}

bool Admission::NeverFits(const absl::Status& status) {
  return absl::IsResourceExhausted(status) && status.GetPayload(kNeverFits).has_value();
}

int64_t Admission::LongestSequence() const {
  const int64_t page = PageSize();
  return LargestCache(-1) / page * page;
}

int64_t Admission::PageSize() const {
  // Every worker of a launch has the same page size.
  int64_t page = 1;
  for (const auto& w : workers_)
    if (w) page = std::max<int64_t>(page, w->info.kv_page_size());
  return page;
}

int64_t Admission::LargestCache(int except) const {
  int64_t largest = 0;
  for (int r = 0; r < static_cast<int>(workers_.size()); ++r)
    if (r != except && workers_[r]) largest = std::max(largest, workers_[r]->info.kv_capacity_tokens());
  return largest;
}

int64_t Admission::CachedPrefixPages(const Worker& w, const Sequence& s) const {
  if (!w.info.prefix_caching() || s.page_names.empty()) return 0;
  // The last prompt token is always computed, so the pages usable are those before it.
  const int64_t usable = std::min<int64_t>(s.page_names.size(), (s.request.prompt_ids_size() - 1) / w.info.kv_page_size());
  int64_t n = 0;
  while (n < usable && (w.prefix_pages.contains(s.page_names[n]) || w.prefix_pending.contains(s.page_names[n]))) ++n;
  return n;
}

int Admission::Choose(const Sequence& s, int64_t need) {
  std::vector<ShardCandidate> candidates(workers_.size());
  for (size_t r = 0; r < workers_.size(); ++r) {
    const Worker& w = *workers_[r];
    candidates[r] = {w.info.kv_capacity_tokens() - w.kv_reserved, w.running, static_cast<int64_t>(w.prefix_pages.size()),
                     CachedPrefixPages(w, s)};
  }
  const ShardChoice choice = ChooseWorker(candidates, need, options_.prefix_route_slack);
  if (choice.by_prefix) ++workers_[choice.rank]->prefix_routed;
  return choice.rank;
}

void Admission::ClearPendingNames(Sequence& s) {
  if (!s.names_pending) return;
  s.names_pending = false;
  if (s.rank < 0 || static_cast<size_t>(s.rank) >= workers_.size() || !workers_[s.rank]) return;
  auto& pending = workers_[s.rank]->prefix_pending;
  for (uint64_t name : s.page_names) {
    const auto it = pending.find(name);
    if (it != pending.end() && --it->second == 0) pending.erase(it);
  }
}

void Admission::End(Sequences::iterator it, const std::string& reason, const absl::Status& status) {
  Sequence& s = it->second;
  ClearPendingNames(s);
  DropSource(s);
  if (s.rank >= 0 && workers_.size() > static_cast<size_t>(s.rank) && workers_[s.rank]) {
    workers_[s.rank]->kv_reserved -= s.reserved;
    --workers_[s.rank]->running;
  }
  if (s.rank < 0) std::erase(queue_, s.id);
  if (metrics_) metrics_->CountRequest(OutcomeOf(status, reason));
  s.channel->Finish(reason, status);
  sequences_.erase(it);
}

}  // namespace daedalus
