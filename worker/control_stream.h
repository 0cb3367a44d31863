// The worker's end of its control stream, as the step loop sees it: messages to the
// coordinator, messages from it, and whether the stream has ended. ControlClient is the gRPC
// one; tests drive the step loop through fakes (a stream that drops, a silent coordinator).
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "proto/cluster.pb.h"

namespace daedalus {

class ControlStream {
 public:
  virtual ~ControlStream() = default;
  // Thread-safe. False once the stream is closed.
  virtual bool Send(const v1::WorkerMessage& message) = 0;
  // The next message from the coordinator, waiting up to `wait`.
  virtual std::optional<v1::CoordinatorMessage> Next(std::chrono::milliseconds wait) = 0;
  // The stream has ended; why, in words.
  virtual bool closed() const = 0;
  virtual std::string close_reason() const = 0;
};

}  // namespace daedalus
