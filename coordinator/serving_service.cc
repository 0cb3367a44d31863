#include "coordinator/serving_service.h"

#include <algorithm>

#include "coordinator/auth.h"
#include "coordinator/outcome.h"
#include "coordinator/generation.h"

namespace daedalus {

namespace {

using Clock = std::chrono::steady_clock;
// How often a waiting call looks at whether its client is still there.
constexpr auto kCancelPoll = std::chrono::milliseconds(50);

}  // namespace

Generation::Clock::time_point AdmissionDeadline(const grpc::ServerContext& context, int64_t queue_timeout_ms,
                                               std::chrono::milliseconds default_timeout, Clock::time_point start) {
  // Admission ends at the request's queue timeout, and in time to answer before the call's own
  // deadline, so the client hears RESOURCE_EXHAUSTED rather than DEADLINE_EXCEEDED.
  // At most a day: a larger wait would overflow the clock's nanoseconds.
  constexpr int64_t kLongest = int64_t{24} * 3600 * 1000;
  Clock::time_point admit_by =
      start + (queue_timeout_ms > 0 ? std::chrono::milliseconds(std::min(queue_timeout_ms, kLongest)) : default_timeout);
  const auto call_deadline = context.deadline();
  if (call_deadline != std::chrono::system_clock::time_point::max()) {
    const auto left = call_deadline - std::chrono::system_clock::now();
    admit_by = std::min(admit_by, start + std::chrono::duration_cast<Clock::duration>(left * 9 / 10));
  }
  return admit_by;
}

grpc::Status ServingService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                      grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const Clock::time_point start = Clock::now();
  if (grpc::Status s = CheckBearer(*context, bearer_token_); !s.ok()) {
    metrics_.CountRequest("unauthenticated");
    return s;
  }
  auto started = Generation::Start(state_, metrics_, config_, tokenizer_, *request,
                                   AdmissionDeadline(*context, request->queue_timeout_ms(), options_.queue_timeout, start),
                                   start);
  if (!started.ok()) return ToGrpc(started.status());
  Generation& generation = **started;
  double ttft_ms = -1;
  Generation::Delta delta;
  while (true) {
    const bool news = generation.Next(Clock::now() + kCancelPoll, delta);
    if (context->IsCancelled()) {
      generation.Cancel();
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
    }
    if (!news) continue;
    if (delta.finished && !delta.status.ok()) return ToGrpc(delta.status);
    v1::GenerateResponse response;
    response.set_id(request->id());
    response.set_worker_rank(delta.worker_rank);
    for (auto& t : delta.tokens) *response.add_tokens() = std::move(t);
    response.set_text(std::move(delta.text));
    if (ttft_ms < 0 && response.tokens_size() > 0) {
      ttft_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      response.set_ttft_ms(ttft_ms);
    }
    if (delta.finished) {
      response.set_finish_reason(delta.finish_reason);
      response.mutable_usage()->set_prompt_tokens(generation.prompt_tokens());
      response.mutable_usage()->set_completion_tokens(generation.completion_tokens());
      response.mutable_usage()->set_cached_tokens(generation.cached_tokens());
      response.set_ttft_ms(std::max(ttft_ms, 0.0));
    }
    if (!writer->Write(response)) {  // the client went away
      generation.Cancel();
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading");
    }
    if (delta.finished) return grpc::Status::OK;
  }
}

grpc::Status ServingService::ClusterStatus(grpc::ServerContext* context, const v1::ClusterStatusRequest*,
                                           v1::ClusterStatusResponse* response) {
  if (grpc::Status s = CheckBearer(*context, bearer_token_); !s.ok()) return s;
  *response = state_.Status(Clock::now());
  return grpc::Status::OK;
}

}  // namespace daedalus
