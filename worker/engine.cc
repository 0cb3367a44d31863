#include "worker/engine.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "core/buffer.h"
#include "core/status.h"
#include "worker/cpu_backend.h"

namespace daedalus {

Engine::Engine(const ModelWeights& weights, const EngineOptions& options)
    : options_(options),
      model_(weights, options.attention),
      cache_(weights.config, options.kv),
      cpu_backend_(options.backend == nullptr ? std::make_unique<CpuBackend>(weights, cache_) : nullptr),
      profiler_(options.profile_ops ? std::make_unique<ProfilingBackend>(
                                          options.backend != nullptr ? *options.backend : *cpu_backend_)
                                    : nullptr),
      backend_(profiler_ != nullptr ? profiler_.get() : options.backend != nullptr ? options.backend : cpu_backend_.get()),
      scheduler_(cache_, SchedulerOptions{options.max_batch_tokens, options.prefill_chunk, options.max_running}) {
  const ModelConfig& c = weights.config;
  expert_load_.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.is_moe_layer(l)) expert_load_[l].assign(c.n_routed_experts, 0);
  if (options.transport != nullptr) {
    // The layers run one after another: one set of exchange buffers serves them all.
    auto buffers = std::make_shared<ExchangeBuffers>();
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      exchanges_.push_back(c.is_moe_layer(l) ? std::make_unique<ExpertExchange>(*options.transport, (*options.placements)[l],
                                                                              c.hidden_size, c.n_routed_experts, buffers)
                                             : nullptr);
    }
  }
}

absl::Status Engine::Validate(const Request& r) const {
  const ModelConfig& c = model_.config();
  const std::string who = r.id.empty() ? "request" : absl::StrCat("request ", r.id);
  if (r.prompt_ids.empty()) return absl::InvalidArgumentError(absl::StrCat(who, ": prompt is empty"));
  for (size_t i = 0; i < r.prompt_ids.size(); ++i) {
    if (r.prompt_ids[i] < 0 || r.prompt_ids[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": prompt token ", i, " is ", r.prompt_ids[i],
                                                     ", outside the vocabulary [0, ", c.vocab_size, ")"));
    }
  }
  if (r.max_new_tokens < 0) return absl::InvalidArgumentError(absl::StrCat(who, ": max_new_tokens is negative"));
  if (static_cast<int64_t>(r.generated_ids.size()) >= std::max<int64_t>(r.max_new_tokens, 1)) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": ", r.generated_ids.size(), " tokens already generated leave none of max_new_tokens (",
                                                   r.max_new_tokens, ") to generate"));
  }
  for (size_t i = 0; i < r.generated_ids.size(); ++i) {
    if (r.generated_ids[i] < 0 || r.generated_ids[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": generated token ", i, " is ", r.generated_ids[i],
                                                     ", outside the vocabulary [0, ", c.vocab_size, ")"));
    }
  }
  const int64_t capacity = cache_.total_pages() * cache_.page_size();
  if (r.max_new_tokens > capacity - static_cast<int64_t>(r.prompt_ids.size())) {  // no sum: it could wrap
    return absl::ResourceExhaustedError(absl::StrCat(who, ": prompt (", r.prompt_ids.size(), " tokens) plus max_new_tokens (",
                                                     r.max_new_tokens, ") is more than the KV cache holds (", capacity, ")"));
  }
  const SamplingParams& s = r.sampling;
  if (!(s.temperature >= 0)) return absl::InvalidArgumentError(absl::StrCat(who, ": temperature must be >= 0"));
  if (!(s.top_p > 0 && s.top_p <= 1)) return absl::InvalidArgumentError(absl::StrCat(who, ": top_p must be in (0, 1]"));
  if (s.top_k < 0) return absl::InvalidArgumentError(absl::StrCat(who, ": top_k must be >= 0"));
  return absl::OkStatus();
}

std::unique_ptr<Sequence> Engine::NewSequence(Request request) {
  auto seq = std::make_unique<Sequence>();
  seq->index = next_index_++;
  seq->tokens = request.prompt_ids;
  seq->tokens.insert(seq->tokens.end(), request.generated_ids.begin(), request.generated_ids.end());
  if (options_.keep_results) results_.push_back(Result{request.id, {}, "", absl::OkStatus(), {}, {}});
  seq->request = std::move(request);
  return seq;
}

absl::StatusOr<int64_t> Engine::Add(Request request) {
  if (absl::Status s = Validate(request); !s.ok()) return s;
  std::unique_ptr<Sequence> seq = NewSequence(std::move(request));
  const int64_t index = seq->index;
  scheduler_.Add(std::move(seq));
  return index;
}

bool Engine::Cancel(int64_t index) {
  std::unique_ptr<Sequence> seq = scheduler_.Remove(index);
  if (seq == nullptr) {
    const auto it = importing_.find(index);
    if (it == importing_.end()) return false;
    seq = std::move(it->second);
    importing_.erase(it);
    cache_.Release(seq->pages);
  }
  Finish(*seq, "cancelled");
  return true;
}

const Engine::HeldPages* Engine::held(int64_t index) const {
  const auto it = held_.find(index);
  return it == held_.end() ? nullptr : &it->second;
}

void Engine::ReleaseHeld(int64_t index) {
  const auto it = held_.find(index);
  if (it == held_.end()) return;
  cache_.Release(it->second.pages);
  held_.erase(it);
}

absl::StatusOr<int64_t> Engine::Import(Request request, int64_t kv_tokens) {
  if (absl::Status s = Validate(request); !s.ok()) return s;
  const int64_t len = static_cast<int64_t>(request.prompt_ids.size() + request.generated_ids.size());
  if (kv_tokens <= 0 || kv_tokens >= len) {
    return absl::InvalidArgumentError(absl::StrCat("request ", request.id, ": ", kv_tokens, " imported positions of ", len,
                                                   " tokens (at least one, and the last is computed here)"));
  }
  std::unique_ptr<Sequence> seq = NewSequence(std::move(request));
  // Pages for every position: those past the imported ones are computed here, as a prefill slice
  // where more than one is left, which (unlike a decode token) does not grow the page table.
  RETURN_IF_ERROR(cache_.Reserve(seq->pages, len));
  seq->n_cached = kv_tokens;
  const int64_t index = seq->index;
  importing_.emplace(index, std::move(seq));
  return index;
}

const PagedKvCache::PageTable* Engine::import_pages(int64_t index) const {
  const auto it = importing_.find(index);
  return it == importing_.end() ? nullptr : &it->second->pages;
}

void Engine::Imported(int64_t index, bool ok) {
  const auto it = importing_.find(index);
  if (it == importing_.end()) return;
  std::unique_ptr<Sequence> seq = std::move(it->second);
  importing_.erase(it);
  if (ok) {
    scheduler_.AddRunning(std::move(seq));
    return;
  }
  cache_.Release(seq->pages);
  seq->n_cached = 0;
  scheduler_.Add(std::move(seq));
}

void Engine::TakeEvents(std::vector<TokenOut>& tokens, std::vector<FinishOut>& finished) {
  tokens.swap(token_events_);
  finished.swap(finish_events_);
  token_events_.clear();
  finish_events_.clear();
}

void Engine::Finish(Sequence& seq, const std::string& reason, absl::Status status) {
  seq.done = true;
  if (options_.keep_results) {
    Result& r = results_[seq.index];
    r.finish_reason = reason;
    r.status = status;
    r.generated_ids.assign(seq.tokens.begin() + seq.request.prompt_ids.size(), seq.tokens.end());
  }
  finish_events_.push_back(FinishOut{seq.index, reason, std::move(status)});
}

namespace {

// The sampled token's log-probability under the raw logits, and the `n` most likely tokens.
void AddLogprobs(const float* logits, int64_t vocab, int32_t n, TokenOut& out) {
  const float max = logits[Argmax(logits, vocab)];
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - max);
  const double log_z = max + std::log(sum);
  out.logprob = static_cast<float>(logits[out.token] - log_z);
  std::vector<int32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  const int64_t keep = std::min<int64_t>(n, vocab);
  std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  for (int64_t i = 0; i < keep; ++i) {
    out.top_ids.push_back(ids[i]);
    out.top_logprobs.push_back(static_cast<float>(logits[ids[i]] - log_z));
  }
}

}  // namespace

bool Engine::Step() {
  if (!status_.ok()) return false;
  const std::vector<ScheduledSlice> slices = scheduler_.Schedule();
  if (!exchanges_.empty()) {
    // Lockstep: all ranks agree whether anyone has work; a rank with none still steps, with an
    // empty batch, to serve its experts.
    std::vector<int64_t> work = {scheduler_.pending()};
    status_ = options_.transport->AllReduceSum(work, absl::StrCat("work check, step ", steps_));
    if (!status_.ok() || work[0] == 0) return false;
  } else if (slices.empty()) {
    return false;
  }
  return RunStep(slices);
}

bool Engine::StepAgreed() {
  if (!status_.ok()) return false;
  return RunStep(scheduler_.Schedule());
}

bool Engine::RunStep(const std::vector<ScheduledSlice>& slices) {
  ForwardBatch batch;
  std::vector<int64_t> first_logit(slices.size(), -1);  // into batch.logit_rows
  last_step_ = StepStats{};
  for (size_t i = 0; i < slices.size(); ++i) {
    const ScheduledSlice& s = slices[i];
    Sequence& seq = *s.seq;
    SequenceSlice slice{&seq.pages, s.start, s.n, static_cast<int64_t>(batch.token_ids.size()), s.decode};
    batch.token_ids.insert(batch.token_ids.end(), seq.tokens.begin() + s.start, seq.tokens.begin() + s.start + s.n);
    batch.slices.push_back(slice);
    if (seq.request.want_prompt_logits && !s.decode) {
      first_logit[i] = static_cast<int64_t>(batch.logit_rows.size());
      for (int64_t t = 0; t < s.n; ++t) batch.logit_rows.push_back(slice.offset + t);
    } else if (s.samples) {
      first_logit[i] = static_cast<int64_t>(batch.logit_rows.size());
      batch.logit_rows.push_back(slice.offset + s.n - 1);
    }
    (s.decode ? last_step_.decode_tokens : last_step_.prefill_tokens) += s.n;
  }
  const int64_t vocab = model_.config().vocab_size;
  FloatBuffer logits(batch.logit_rows.size() * vocab);
  const MoeContext moe{exchanges_.empty() ? nullptr : &exchanges_, &expert_load_, steps_++};
  status_ = model_.Forward(batch, *backend_, logits.data(), moe);
  if (!status_.ok()) return false;
  scheduler_.Computed(slices);

  // The row each sampling slice draws from, and its token, drawn over the threads: a batch's
  // logits (8 MB at 64 rows of a 32K vocabulary) come back from memory, and each draw depends
  // only on its row, its sampling parameters and the position.
  auto sample_row = [&](size_t i) -> const float* {
    const ScheduledSlice& s = slices[i];
    const bool prompt_rows = s.seq->request.want_prompt_logits && !s.decode;
    return &logits[(first_logit[i] + (prompt_rows ? s.n - 1 : 0)) * vocab];
  };
  std::vector<int32_t> sampled(slices.size(), -1);
  const int64_t n_slices = static_cast<int64_t>(slices.size());
#pragma omp parallel for schedule(static) if (n_slices >= 8)
  for (int64_t i = 0; i < n_slices; ++i) {
    const Sequence& seq = *slices[i].seq;
    if (slices[i].samples && seq.to_compute() == 0)
      sampled[i] = Sampler(seq.request.sampling).Sample(sample_row(i), vocab, static_cast<int64_t>(seq.tokens.size()));
  }

  for (size_t i = 0; i < slices.size(); ++i) {
    const ScheduledSlice& s = slices[i];
    Sequence& seq = *s.seq;
    const bool prompt_rows = seq.request.want_prompt_logits && !s.decode;
    if (prompt_rows) {  // positions computed again after a preemption are kept once
      Result& r = results_[seq.index];
      for (int64_t t = 0; t < s.n; ++t) {
        if (s.start + t < static_cast<int64_t>(r.prompt_logits.size())) continue;
        const float* row = &logits[(first_logit[i] + t) * vocab];
        r.prompt_logits.emplace_back(row, row + vocab);
      }
    }
    if (seq.to_compute() > 0) continue;  // a prefill chunk short of the end
    if (s.samples) {
      const float* row = sample_row(i);
      const int32_t token = sampled[i];
      seq.tokens.push_back(token);
      TokenOut out;
      out.index = seq.index;
      out.token = token;
      if (seq.generated() == 1) out.cached_tokens = seq.prefix_hit;
      if (seq.request.logprobs > 0) AddLogprobs(row, vocab, seq.request.logprobs, out);
      if (options_.keep_results && seq.request.logprobs > 0) results_[seq.index].logprobs.push_back(out);
      token_events_.push_back(std::move(out));
      const std::optional<int64_t> eos = options_.eos_token_id ? options_.eos_token_id : model_.config().eos_token_id;
      if (seq.request.stop_at_eos && eos && token == *eos) {
        Finish(seq, "stop");
        continue;
      }
    }
    if (seq.generated() >= seq.request.max_new_tokens) {
      Finish(seq, "length");
    } else if (s.samples && seq.request.hand_off) {  // its pages stay for the decode worker
      held_[seq.index] = HeldPages{std::move(seq.pages), seq.n_cached};
      seq.pages.clear();
      Finish(seq, "handoff");
    }
  }
  scheduler_.Retire();
  return true;
}

std::vector<Result> Engine::RunToCompletion() {
  while (Step()) {
  }
  // After an error every unfinished request reports it. Otherwise anything still waiting could
  // never fit; Validate rules that out, so that is a guard.
  auto fail = [&](Sequence& seq) {
    Finish(seq, "error", status_.ok() ? absl::ResourceExhaustedError("KV cache cannot hold the request") : status_);
  };
  for (auto& seq : scheduler_.RemoveAll()) fail(*seq);
  return results_;
}

}  // namespace daedalus
