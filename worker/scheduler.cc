#include "worker/scheduler.h"

#include <algorithm>

namespace daedalus {

Scheduler::Scheduler(PagedKvCache& cache, const SchedulerOptions& options) : cache_(cache), options_(options) {}

void Scheduler::Add(std::unique_ptr<Sequence> seq) { waiting_.push_back(std::move(seq)); }

void Scheduler::AddRunning(std::unique_ptr<Sequence> seq) { running_.push_back(std::move(seq)); }

void Scheduler::Admit() {
  const int64_t ps = cache_.page_size();
  for (size_t i = 0; i < waiting_.size() && static_cast<int64_t>(running_.size()) < options_.max_running;) {
    Sequence& seq = *waiting_[i];
    const int64_t len = static_cast<int64_t>(seq.tokens.size());
    // At least the last token is computed: its logits sample the next one. A request for every
    // prompt position's logits computes them all. Only prompt positions are named and matched: a
    // generated token's row is computed in decode form, which agrees with the prefill form only to
    // rounding, and a page must hold what this sequence would compute there without the cache (a
    // follow-up turn re-sends earlier answers as prompt; a preempted sequence recomputes its
    // generated tokens in decode form).
    const int64_t matchable = std::min(len - 1, seq.prompt());
    const int64_t hit =
        seq.request.want_prompt_logits ? 0 : cache_.MatchPrefix(seq.tokens, matchable, seq.pages, seq.chain);
    auto put_back = [&] {
      cache_.Release(seq.pages);
      seq.chain = {};
    };
    if (cache_.prefix_caching() && hit + ps <= matchable &&
        computing_.contains(cache_.PageName(seq.chain.hash, seq.tokens.data() + hit))) {
      put_back();  // its next page is being computed by another sequence: wait for it, let others pass
      ++i;
      continue;
    }
    const int64_t need = (len + ps - 1) / ps - static_cast<int64_t>(seq.pages.size());
    // A spare page for each running sequence that will still grow.
    const int64_t headroom = std::count_if(running_.begin(), running_.end(), [&](const auto& r) {
      return (r->prompt() + r->request.max_new_tokens + ps - 1) / ps > static_cast<int64_t>(r->pages.size());
    });
    if (need + headroom > cache_.free_pages() || !cache_.Reserve(seq.pages, len).ok()) {
      put_back();
      return;  // first come, first served: the rest wait behind it
    }
    seq.n_cached = hit;
    if (seq.preemptions == 0) {
      seq.prefix_hit = hit;
      prompt_tokens_ += seq.prompt();
      prompt_tokens_cached_ += hit;
    }
    NoteComputing(seq);
    running_.push_back(std::move(waiting_[i]));
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

std::vector<ScheduledSlice> Scheduler::Schedule() {
  Admit();
  std::vector<ScheduledSlice> slices;
  int64_t budget = options_.max_batch_tokens;
  auto decoding = [](const Sequence& s) { return s.to_compute() == 1 && s.n_cached >= s.prompt(); };
  // Decode tokens first, one per sequence, oldest first: growing may preempt the newest.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence& seq = *running_[i];
    if (!decoding(seq)) continue;
    if (!Grow(seq)) break;  // it was the newest, and is preempted
    slices.push_back(ScheduledSlice{&seq, seq.n_cached, 1, true, seq.request.max_new_tokens > 0});
    --budget;
  }
  // Then prefill chunks in admission order, never across the prompt's end.
  for (auto& s : running_) {
    Sequence& seq = *s;
    if (budget <= 0) break;
    if (decoding(seq)) continue;
    int64_t n = std::min({seq.to_compute(), options_.prefill_chunk, budget});
    if (seq.n_cached < seq.prompt()) n = std::min(n, seq.prompt() - seq.n_cached);
    const bool reaches_end = seq.n_cached + n == static_cast<int64_t>(seq.tokens.size());
    slices.push_back(ScheduledSlice{&seq, seq.n_cached, n, seq.n_cached >= seq.prompt(),
                                    reaches_end && seq.request.max_new_tokens > 0});
    budget -= n;
  }
  return slices;
}

bool Scheduler::Grow(Sequence& seq) {
  while (!cache_.Reserve(seq.pages, static_cast<int64_t>(seq.tokens.size())).ok()) {
    const bool self = running_.back().get() == &seq;
    Preempt(running_.size() - 1);
    if (self) return false;
  }
  return true;
}

void Scheduler::Preempt(size_t running_index) {
  std::unique_ptr<Sequence> seq = std::move(running_[running_index]);
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(running_index));
  Release(*seq);
  seq->n_cached = 0;
  ++seq->preemptions;
  ++preemptions_;
  waiting_.push_front(std::move(seq));
}

void Scheduler::Computed(const std::vector<ScheduledSlice>& slices) {
  for (const ScheduledSlice& s : slices) {
    Sequence& seq = *s.seq;
    seq.n_cached = s.start + s.n;
    cache_.Publish(seq.pages, seq.tokens, std::min(seq.n_cached, seq.prompt()), seq.chain);  // prompt pages only
    DoneComputing(seq);
  }
}

void Scheduler::Retire() {
  for (auto& seq : running_)
    if (seq->done) Release(*seq);
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s->done; });
}

std::unique_ptr<Sequence> Scheduler::Remove(int64_t index) {
  std::unique_ptr<Sequence> out;
  auto take = [&](auto& list) {
    for (auto it = list.begin(); it != list.end(); ++it) {
      if ((*it)->index != index) continue;
      out = std::move(*it);
      list.erase(it);
      Release(*out);
      return true;
    }
    return false;
  };
  if (!take(waiting_)) take(running_);
  return out;
}

std::vector<std::unique_ptr<Sequence>> Scheduler::RemoveAll() {
  std::vector<std::unique_ptr<Sequence>> out;
  for (auto& seq : running_) out.push_back(std::move(seq));
  for (auto& seq : waiting_) out.push_back(std::move(seq));
  running_.clear();
  waiting_.clear();
  for (auto& seq : out) Release(*seq);
  return out;
}

void Scheduler::Release(Sequence& seq) {
  cache_.Release(seq.pages);
  seq.chain = {};
  if (auto it = computing_by_.find(&seq); it != computing_by_.end()) {
    for (uint64_t name : it->second.names)
      if (--computing_[name] == 0) computing_.erase(name);
    computing_by_.erase(it);
  }
}

void Scheduler::NoteComputing(Sequence& seq) {
  if (!cache_.prefix_caching()) return;
  const int64_t ps = cache_.page_size();
  Computing& c = computing_by_[&seq];
  c.first_page = seq.chain.pages;
  std::vector<uint64_t>& names = c.names;
  uint64_t parent = seq.chain.hash;
  for (int64_t p = seq.chain.pages; (p + 1) * ps <= seq.prompt(); ++p) {  // the pages it will name
    parent = cache_.PageName(parent, seq.tokens.data() + p * ps);
    names.push_back(parent);
    ++computing_[parent];
  }
}

void Scheduler::DoneComputing(Sequence& seq) {
  auto it = computing_by_.find(&seq);
  if (it == computing_by_.end()) return;
  // The chain has now offered its first chain.pages pages for naming.
  Computing& c = it->second;
  const int64_t done = std::clamp<int64_t>(seq.chain.pages - c.first_page, 0, static_cast<int64_t>(c.names.size()));
  for (int64_t i = 0; i < done; ++i)
    if (--computing_[c.names[i]] == 0) computing_.erase(c.names[i]);
  c.names.erase(c.names.begin(), c.names.begin() + done);
  c.first_page += done;
  if (c.names.empty()) computing_by_.erase(it);
}

}  // namespace daedalus
