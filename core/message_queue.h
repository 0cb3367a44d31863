// A queue of messages between threads that one side can close: Pop waits for a message or the
// close, and drains what was queued before it. The worker's control stream queues the
// coordinator's messages in one; the tests' fake streams do the same.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <string>

namespace daedalus {

template <typename T>
class MessageQueue {
 public:
  // False (and `message` dropped) once closed.
  bool Push(T message) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return false;
    items_.push_back(std::move(message));
    cv_.notify_all();
    return true;
  }
  // The first close's reason stays.
  void Close(std::string reason) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closed_) close_reason_ = std::move(reason);
    closed_ = true;
    cv_.notify_all();
  }
  // The oldest message, waiting up to `wait` for one; nothing when none came in time, or when
  // the queue is closed and drained.
  std::optional<T> Pop(std::chrono::milliseconds wait) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, wait, [&] { return !items_.empty() || closed_; });
    if (items_.empty()) return std::nullopt;
    T message = std::move(items_.front());
    items_.pop_front();
    return message;
  }
  bool closed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }
  std::string close_reason() const {
    std::lock_guard<std::mutex> lock(mu_);
    return close_reason_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<T> items_;
  bool closed_ = false;
  std::string close_reason_;
};

}  // namespace daedalus
