#include "worker/serve_loop.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace daedalus {

namespace {

using Clock = std::chrono::steady_clock;

Request ToRequest(const v1::Admit& a) {
  Request r;
  r.id = absl::StrCat(a.sequence());
  r.prompt_ids.assign(a.prompt_ids().begin(), a.prompt_ids().end());
  r.max_new_tokens = a.max_new_tokens();
  r.sampling.temperature = a.temperature();
  r.sampling.top_p = a.top_p();
  r.sampling.top_k = a.top_k();
  r.sampling.seed = a.seed();
  r.stop_at_eos = !a.ignore_eos();
  r.logprobs = a.logprobs();
  r.generated_ids.assign(a.generated_ids().begin(), a.generated_ids().end());
  r.hand_off = a.hand_off();
  return r;
}

// Heartbeats from a thread of their own, so a long step does not look like a dead worker.
// They carry the step count, so a worker that answers but never steps can be told apart.
class Heartbeats {
 public:
  Heartbeats(ControlStream& control, std::chrono::milliseconds interval)
      : control_(control), interval_(interval), thread_([this] { Run(); }) {}
  ~Heartbeats() {
    stop_ = true;
    thread_.join();
  }
  std::atomic<int64_t> step{0}, running{0}, kv_used{0};
  void AddStep(double ms) {
    std::lock_guard<std::mutex> lock(mu_);
    step_ms_.push_back(ms);
  }

 private:
  void Run() {
    auto next = Clock::now();
    while (!stop_) {
      if (Clock::now() >= next) {
        v1::WorkerMessage m;
        m.mutable_heartbeat()->set_step(step);
        m.mutable_heartbeat()->set_running(running);
        m.mutable_heartbeat()->set_kv_used_tokens(kv_used);
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (!step_ms_.empty()) {
            std::nth_element(step_ms_.begin(), step_ms_.begin() + step_ms_.size() / 2, step_ms_.end());
            m.mutable_heartbeat()->set_step_ms_median(step_ms_[step_ms_.size() / 2]);
            m.mutable_heartbeat()->set_step_ms_max(*std::max_element(step_ms_.begin(), step_ms_.end()));
            step_ms_.clear();
          }
        }
        control_.Send(m);
        next += interval_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ControlStream& control_;
  const std::chrono::milliseconds interval_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<double> step_ms_;  // since the last heartbeat
  std::thread thread_;
};

// Whether all `world` ranks hold `value`, from the all-reduced count of ranks holding one, the
// values' sum and the sum of their squares: only `world` equal values give all three (with
// three ranks, 1, 2 and 3 sum as three 2s).
bool EveryRankHolds(int64_t value, int64_t count, int64_t sum, int64_t sum_sq, int64_t world) {
  return count == world && sum == world * value && sum_sq == world * value * value;
}

}  // namespace

absl::StatusOr<ServeEnd> ServeLoop(Engine& engine, Transport* transport, ControlStream& control,
                                   const ServeLoopOptions& options) {
  std::unordered_map<uint64_t, int64_t> index_of;    // coordinator sequence → engine index
  std::unordered_map<int64_t, uint64_t> sequence_of;  // and back
  Heartbeats heartbeats(control, options.heartbeat_interval);
  ExpertLoad reported = engine.expert_load();
  auto next_load_report = Clock::now() + options.heartbeat_interval;
  bool stop = false, reregister = false, cluster_idle = false;
  std::optional<v1::PlacementUpdate> update;  // received, not yet applied
  std::optional<v1::Reform> reform;           // the newest received, not yet applied
  bool reform_now = false;                    // a collective failed: apply it at once, join or not
  int64_t preparing = 0;                      // the version whose experts are being read (0: none)
  bool prepared = false;                      // ... and they are ready
  absl::Status why = absl::OkStatus();
  ServeEnd end = ServeEnd::kShutdown;
  std::vector<TokenOut> tokens;
  std::vector<FinishOut> finished;
  std::vector<uint64_t> removed_names, added_names;

  // Prefill/decode disaggregation, the decode side: reads in flight (ticket → engine index), and
  // the receipts of the step's events.
  std::unordered_map<uint64_t, int64_t> reading;
  std::unordered_set<int64_t> abort_after_read;
  std::vector<v1::KvReceived> received;
  // What the coordinator hears of a sequence's pages: read (or given up on), and for how long.
  auto receipt = [&](uint64_t sequence, const absl::Status& status, size_t bytes, double seconds) {
    v1::KvReceived& r = received.emplace_back();
    r.set_sequence(sequence);
    r.set_ok(status.ok());
    r.set_bytes(static_cast<int64_t>(bytes));
    r.set_seconds(seconds);
    if (!status.ok()) r.set_error(std::string(status.message()));
  };
  // Starts reading the pages of an Admit with a kv_source into pages reserved for them; the
  // engine index, or why it cannot.
  auto start_read = [&](const v1::Admit& a) -> absl::StatusOr<int64_t> {
    const v1::KvSource& from = a.kv_source();
    const PagedKvCache& cache = engine.cache();
    if (options.kv_transfer == nullptr) {
      return absl::FailedPreconditionError("this worker reads no KV pages (not a decode worker)");
    }
    if (from.page_size() != cache.page_size() || from.row_bytes() != cache.row_bytes()) {
      return absl::FailedPreconditionError(absl::StrCat("the prefill worker's pages (", from.page_size(), " tokens of ", from.row_bytes(),
                                                        "-byte rows) are not laid out as this worker's (", cache.page_size(),
                                                        " of ", cache.row_bytes(), "): same --page-size and --kv-dtype needed"));
    }
    if (from.pages_size() < (from.tokens() + cache.page_size() - 1) / cache.page_size()) {
      return absl::InvalidArgumentError("the prefill worker's page table does not cover the positions it names");
    }
    for (const int32_t page : from.pages()) {
      if (page < 0) {
        return absl::InvalidArgumentError(absl::StrCat("the prefill worker's page table names page ", page));
      }
    }
    ASSIGN_OR_RETURN(const int64_t index, engine.Import(ToRequest(a), from.tokens()));
    const PagedKvCache::PageTable source(from.pages().begin(), from.pages().end());
    const auto src = cache.Ranges(source, from.tokens());
    const auto dst = cache.Ranges(*engine.import_pages(index), from.tokens());
    std::vector<KvTransfer::Range> ranges;
    for (size_t i = 0; i < src.size(); ++i) ranges.push_back({src[i].offset, dst[i].offset, src[i].bytes});
    reading[options.kv_transfer->Read(from.address(), from.pool_key(), std::move(ranges))] = index;
    return index;
  };
  // An Admit with a kv_source: its pages read, or, when that cannot start, the sequence computed
  // here from its tokens (and the prefill worker may free its copy at once).
  auto import = [&](const v1::Admit& a) -> absl::StatusOr<int64_t> {
    absl::StatusOr<int64_t> index = start_read(a);
    if (index.ok()) return index;
    receipt(a.sequence(), index.status(), 0, 0);
    return engine.Add(ToRequest(a));
  };
  // Reads that ended: the sequences run, or are computed again when the read failed.
  auto collect_reads = [&] {
    if (options.kv_transfer == nullptr || reading.empty()) return;
    for (const KvTransfer::Done& d : options.kv_transfer->Poll()) {
      const auto it = reading.find(d.ticket);
      if (it == reading.end()) continue;
      const int64_t index = it->second;
      reading.erase(it);
      engine.Imported(index, d.status.ok());
      if (abort_after_read.erase(index) > 0) engine.Cancel(index);
      receipt(sequence_of[index], d.status, d.bytes, d.seconds);
    }
  };

  auto handle = [&](const v1::CoordinatorMessage& m) {
    if (m.has_admit()) {
      auto added = m.admit().has_kv_source() ? import(m.admit()) : engine.Add(ToRequest(m.admit()));
      if (added.ok()) {
        index_of[m.admit().sequence()] = *added;
        sequence_of[*added] = m.admit().sequence();
        return;
      }
      v1::WorkerMessage out;
      v1::FinishEvent* f = out.mutable_events()->add_finished();
      f->set_sequence(m.admit().sequence());
      f->set_reason("error");
      f->set_error(std::string(added.status().message()));
      control.Send(out);
    } else if (m.has_abort() || m.has_release()) {
      const uint64_t sequence = m.has_abort() ? m.abort().sequence() : m.release().sequence();
      auto it = index_of.find(sequence);
      if (it == index_of.end()) return;
      if (engine.held(it->second) != nullptr) {  // a handed-off sequence's pages
        engine.ReleaseHeld(it->second);
        sequence_of.erase(it->second);
        index_of.erase(it);
      } else if (engine.import_pages(it->second) != nullptr) {
        abort_after_read.insert(it->second);  // its pages are being written
      } else if (m.has_abort()) {
        engine.Cancel(it->second);
      }
    } else if (m.has_shutdown()) {
      (m.shutdown().reregister() ? reregister : stop) = true;
    } else if (m.has_placement_update()) {
      if (!update || m.placement_update().version() > update->version()) update = m.placement_update();
    } else if (m.has_reform()) {
      if (!reform || m.reform().generation() > reform->generation()) reform = m.reform();
      update.reset();  // of the old world; one sent after the Reform is for the new one
    }
  };
  // A collective failed: in an elastic cluster that is a peer lost (or a Reform's interrupt);
  // the peers it waited for are reported, and the coordinator's Reform comes, or has come.
  // True when one is here to apply.
  auto await_reform = [&](const absl::Status& failure) {
    if (!options.reform) return false;
    if (transport != nullptr && !absl::IsAborted(failure) && !transport->waited_for().empty()) {
      v1::WorkerMessage m;
      v1::PeersLost* lost = m.mutable_peers_lost();
      lost->set_generation(transport->epoch());
      for (int r : transport->waited_for()) lost->add_ranks(r);
      lost->set_message(std::string(failure.message()));
      control.Send(m);
    }
    const auto until = Clock::now() + options.reform_wait;
    while (!reform && !stop && !reregister && !control.closed() && Clock::now() < until) {
      if (auto m = control.Next(std::chrono::milliseconds(50))) handle(*m);
    }
    reform_now = reform.has_value();
    return reform_now;
  };
  // Switches to the newest Reform (the hook drops the old world's placement being read).
  auto apply_reform = [&]() -> absl::Status {
    if (!options.reform) return absl::UnimplementedError("this worker cannot join a re-formed cluster");
    RETURN_IF_ERROR(options.reform(*reform));
    reform.reset();
    reform_now = false;
    preparing = 0;
    prepared = false;
    engine.Resume();
    cluster_idle = false;
    return absl::OkStatus();
  };
  // Reads the newest update's experts in the background: starts when none is being read, and
  // notes when that reading is done.
  auto prepare = [&]() -> absl::Status {
    if (!update || reform) return absl::OkStatus();  // an update sent after a Reform is for the new world
    if (!options.placement.prepare) return absl::UnimplementedError("this worker cannot apply placement updates");
    if (preparing != 0 && !prepared) {
      ASSIGN_OR_RETURN(prepared, options.placement.prepared());
    }
    if (preparing != update->version() && (preparing == 0 || prepared)) {
      RETURN_IF_ERROR(options.placement.prepare(update->placement()));
      preparing = update->version();
      prepared = false;
      ASSIGN_OR_RETURN(prepared, options.placement.prepared());
    }
    return absl::OkStatus();
  };
  auto ready = [&] { return update && preparing == update->version() && prepared; };
  // Switches to the pending placement at this step boundary when every rank holds the same one
  // (`ranks_with` of them, versions summing to `version_sum`, their squares to `version_sq`) and
  // has read its experts (`ranks_ready`).
  auto maybe_apply = [&](int64_t ranks_with, int64_t version_sum, int64_t version_sq, int64_t ranks_ready,
                         int world) -> absl::Status {
    if (!update || !EveryRankHolds(update->version(), ranks_with, version_sum, version_sq, world) ||
        ranks_ready != world) {
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(options.placement.apply());
    update.reset();
    preparing = 0;
    prepared = false;
    return absl::OkStatus();
  };

  while (true) {
    // Idle: wait briefly for an admission (or a read to end) instead of spinning on the all-reduce.
    if (cluster_idle && !stop) {
      const bool short_wait = transport != nullptr || !reading.empty();
      if (auto m = control.Next(short_wait ? options.idle_wait : std::chrono::milliseconds(50))) handle(*m);
    }
    collect_reads();
    while (auto m = control.Next(std::chrono::milliseconds(0))) handle(*m);
    // A join waits for the step boundary every rank agrees on (below); the rest apply now.
    if (reform && (transport == nullptr || !reform->join() || reform_now)) {
      if (absl::Status s = apply_reform(); !s.ok()) {
        why = s;
        break;
      }
    }
    if (absl::Status s = prepare(); !s.ok()) {
      why = s;
      break;
    }
    heartbeats.running = engine.pending();  // admitted sequences count before their first step
    if (control.closed() && !stop) reregister = true;
    bool stepped = false;
    if (transport != nullptr) {
      const bool joining = reform.has_value(), placing = update && !joining;
      std::vector<int64_t> agree = {engine.pending(),          stop ? 1 : 0,
                                    reregister ? 1 : 0,        placing ? 1 : 0,
                                    placing ? update->version() : 0, placing && ready() ? 1 : 0,
                                    joining ? 1 : 0,           joining ? reform->generation() : 0,
                                    joining ? reform->generation() * reform->generation() : 0,
                                    placing ? update->version() * update->version() : 0};
      if (absl::Status s = transport->AllReduceSum(agree, absl::StrCat("work check, step ", heartbeats.step.load()));
          !s.ok()) {
        if (await_reform(s)) continue;
        why = s;
        break;
      }
      if (agree[1] > 0 || agree[2] > 0) {
        end = agree[1] > 0 ? ServeEnd::kShutdown : ServeEnd::kReregister;
        break;
      }
      // Every rank holds the same join: switch to the grown world before another step.
      const int64_t world = transport->world_size();
      if (joining && EveryRankHolds(reform->generation(), agree[6], agree[7], agree[8], world)) {
        if (absl::Status s = apply_reform(); !s.ok()) {
          why = s;
          break;
        }
        continue;
      }
      if (absl::Status s = maybe_apply(agree[3], agree[4], agree[9], agree[5], world); !s.ok()) {
        why = s;
        break;
      }
      cluster_idle = agree[0] == 0;
      if (!cluster_idle) {
        const auto began = Clock::now();
        if (!engine.StepAgreed()) {
          if (await_reform(engine.status())) continue;
          break;
        }
        heartbeats.AddStep(std::chrono::duration<double, std::milli>(Clock::now() - began).count());
        stepped = true;
      }
    } else {
      if (stop || reregister) {
        end = stop ? ServeEnd::kShutdown : ServeEnd::kReregister;
        break;
      }
      const int64_t v = update ? update->version() : 0;
      if (absl::Status s = maybe_apply(update ? 1 : 0, v, v * v, ready() ? 1 : 0, 1); !s.ok()) {
        why = s;
        break;
      }
      cluster_idle = engine.pending() == 0;
      const auto began = Clock::now();
      stepped = !cluster_idle && engine.Step();
      if (stepped) heartbeats.AddStep(std::chrono::duration<double, std::milli>(Clock::now() - began).count());
      if (!engine.status().ok()) break;
    }
    if (stepped) ++heartbeats.step;
    engine.TakeEvents(tokens, finished);
    heartbeats.running = engine.pending();
    heartbeats.kv_used = (engine.cache().total_pages() - engine.cache().free_pages()) * engine.cache().page_size();
    v1::WorkerMessage out;
    v1::StepEvents* events = out.mutable_events();
    for (const TokenOut& t : tokens) {
      v1::TokenEvent* e = events->add_tokens();
      e->set_sequence(sequence_of[t.index]);
      e->set_token_id(t.token);
      e->set_logprob(t.logprob);
      *e->mutable_top_ids() = {t.top_ids.begin(), t.top_ids.end()};
      *e->mutable_top_logprobs() = {t.top_logprobs.begin(), t.top_logprobs.end()};
      if (t.cached_tokens >= 0) e->set_cached_tokens(t.cached_tokens);
    }
    for (const FinishOut& f : finished) {
      const uint64_t sequence = sequence_of[f.index];
      if (const Engine::HeldPages* held = engine.held(f.index); held != nullptr) {  // "handoff"
        v1::KvReady* ready = events->add_kv_ready();
        ready->set_sequence(sequence);
        *ready->mutable_pages() = {held->pages.begin(), held->pages.end()};
        ready->set_tokens(held->tokens);
        ready->set_page_size(engine.cache().page_size());
        ready->set_row_bytes(engine.cache().row_bytes());
        continue;  // its pages stay until the coordinator's Release
      }
      v1::FinishEvent* e = events->add_finished();
      e->set_sequence(sequence);
      e->set_reason(f.reason);
      if (!f.status.ok()) e->set_error(std::string(f.status.message()));
      sequence_of.erase(f.index);
      index_of.erase(sequence);
    }
    if (Clock::now() >= next_load_report) {  // expert load since the last report
      for (size_t l = 0; l < reported.size(); ++l) {
        for (size_t e = 0; e < reported[l].size(); ++e) {
          events->add_expert_tokens(engine.expert_load()[l][e] - reported[l][e]);
        }
      }
      reported = engine.expert_load();
      next_load_report = Clock::now() + options.heartbeat_interval;
    }
    // The cache's named pages changed in this step: reported in the same message as the tokens
    // whose prefill named them, so the coordinator's copy never lags its routing decisions.
    engine.cache().TakeNameChanges(removed_names, added_names);
    *events->mutable_prefix_pages_removed() = {removed_names.begin(), removed_names.end()};
    *events->mutable_prefix_pages_added() = {added_names.begin(), added_names.end()};
    for (v1::KvReceived& r : received) *events->add_kv_received() = std::move(r);
    received.clear();
    if (events->tokens_size() > 0 || events->finished_size() > 0 || events->expert_tokens_size() > 0 ||
        !removed_names.empty() || !added_names.empty() || events->kv_ready_size() > 0 || events->kv_received_size() > 0) {
      events->set_kv_used_tokens(heartbeats.kv_used);
      events->set_prompt_tokens(engine.prompt_tokens());
      events->set_prompt_tokens_cached(engine.prompt_tokens_cached());
      events->set_kv_evictions(engine.cache().evictions());
      events->set_preemptions(engine.preemptions());
      control.Send(out);
    }
  }
  // Reads still in flight write into this engine's pages: let them end (bounded by the
  // transfer's timeout) before the pool can be reused.
  while (!reading.empty()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    collect_reads();
  }
  if (!engine.status().ok()) why = engine.status();
  if (!why.ok()) {
    v1::WorkerMessage failure;
    failure.mutable_failure()->set_message(std::string(why.message()));
    control.Send(failure);
    return why;
  }
  return end;
}

}  // namespace daedalus
