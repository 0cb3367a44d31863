#include "coordinator/generation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "coordinator/outcome.h"
#include "coordinator/validate.h"
#include "core/status.h"
#include "core/utf8.h"

namespace daedalus {

Generation::Generation(Cluster& state, const Tokenizer* tokenizer, v1::GenerateRequest request)
    : state_(state), tokenizer_(tokenizer), request_(std::move(request)) {}

Generation::~Generation() {
  if (!done_ && channel_) state_.Cancel(channel_->sequence());
}

absl::StatusOr<std::unique_ptr<Generation>> Generation::Start(Cluster& state, Metrics& metrics, const ModelConfig& config,
                                                              const Tokenizer* tokenizer, v1::GenerateRequest request,
                                                              Clock::time_point admit_by, Clock::time_point start) {
  if (absl::Status s = PrepareGenerateRequest(config, tokenizer, request); !s.ok()) {
    metrics.CountRequest(OutcomeOf(s, ""));
    return s;
  }
  auto g = std::unique_ptr<Generation>(new Generation(state, tokenizer, std::move(request)));
  if (tokenizer != nullptr && (g->request_.return_text() || g->request_.stop_size() > 0)) {
    g->decoder_ = std::make_unique<StreamDecoder>(*tokenizer);
  }
  ASSIGN_OR_RETURN(g->channel_, state.Submit(g->request_, admit_by, start));
  return g;
}

bool Generation::ReleaseText(bool final, std::string& out) {
  size_t stop_at = std::string::npos;
  for (const std::string& stop : request_.stop()) stop_at = std::min(stop_at, held_.find(stop));
  if (stop_at != std::string::npos) {
    out += held_.substr(0, stop_at);
    held_.clear();
    return true;
  }
  // Hold back the longest tail that could still grow into a stop string.
  size_t keep = 0;
  if (!final) {
    for (const std::string& stop : request_.stop()) {
      for (size_t n = std::min(stop.size() - 1, held_.size()); n > keep; --n) {
        if (held_.compare(held_.size() - n, n, stop, 0, n) == 0) {
          keep = n;
          break;
        }
      }
    }
  }
  // Never split a character: hold back its lead bytes too.
  size_t release = held_.size() - keep;
  while (release > 0 && release < held_.size() && (static_cast<uint8_t>(held_[release]) & 0xc0) == 0x80) --release;
  out += held_.substr(0, release);
  held_.erase(0, release);
  return false;
}

bool Generation::Next(Clock::time_point until, Delta& out) {
  out = Delta{};
  if (done_) return false;
  RequestChannel::News news;
  const bool finished = channel_->Take(until, news);
  out.worker_rank = news.worker_rank;
  if (finished && !news.status.ok()) {
    done_ = true;
    out.finished = true;
    out.status = news.status;
    return true;
  }
  for (auto& t : news.tokens) {
    if (decoder_) held_ += decoder_->Push(t.token_id());
    out.tokens.push_back(std::move(t));
    ++completion_tokens_;
    if (decoder_ && ReleaseText(false, out.text)) {  // a stop string ends it here
      state_.Cancel(channel_->sequence(), "stop");
      done_ = true;
      out.finished = true;
      out.finish_reason = "stop";
      return true;
    }
  }
  if (finished) {
    done_ = true;
    bool stopped = false;
    if (decoder_) {
      held_ += decoder_->Finish();
      stopped = ReleaseText(true, out.text);  // its last bytes completed a stop string
    }
    out.finished = true;
    out.finish_reason = stopped ? "stop" : news.finish_reason;
  }
  return out.finished || !out.tokens.empty();
}

void Generation::Cancel() {
  if (done_) return;
  done_ = true;
  state_.Cancel(channel_->sequence());
}

std::string Generation::TokenText(int32_t id) const {
  return tokenizer_ ? Utf8Lossy(tokenizer_->TokenBytes(id, false)) : "";
}

}  // namespace daedalus
