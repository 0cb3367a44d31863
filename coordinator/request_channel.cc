#include "coordinator/request_channel.h"

#include <utility>

namespace daedalus {

void RequestChannel::Admitted(int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  news_.worker_rank = rank;
  fresh_ = true;
  cv_.notify_all();
}

void RequestChannel::Push(v1::GeneratedToken token) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  news_.tokens.push_back(std::move(token));
  fresh_ = true;
  cv_.notify_all();
}

void RequestChannel::SetCachedTokens(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  cached_tokens_ = n;
}

int64_t RequestChannel::cached_tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_tokens_;
}

void RequestChannel::Finish(std::string reason, absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  finished_ = true;
  news_.finished = true;
  news_.finish_reason = std::move(reason);
  news_.status = std::move(status);
  fresh_ = true;
  cv_.notify_all();
}

absl::Status RequestChannel::WaitAdmitted(Clock::time_point until) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_until(lock, until, [&] { return news_.worker_rank >= 0 || finished_; });
  return finished_ && news_.worker_rank < 0 ? news_.status : absl::OkStatus();
}

bool RequestChannel::Take(Clock::time_point until, News& out) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_until(lock, until, [&] { return fresh_; });
  out = std::move(news_);
  news_ = News{};
  news_.worker_rank = out.worker_rank;
  news_.finished = out.finished;
  fresh_ = false;
  return out.finished;
}

}  // namespace daedalus
