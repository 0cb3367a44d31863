#include "coordinator/serving_service.h"

#include <algorithm>

#include "coordinator/auth.h"
#include "coordinator/outcome.h"
#include "coordinator/validate.h"

namespace daedalus {

namespace {

using Clock = std::chrono::steady_clock;
// How often a waiting call looks at whether its client is still there.
constexpr auto kCancelPoll = std::chrono::milliseconds(50);

}  // namespace

grpc::Status ServingService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                      grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const Clock::time_point start = Clock::now();
  if (grpc::Status s = CheckBearer(*context, bearer_token_); !s.ok()) {
    metrics_.CountRequest("unauthenticated");
    return s;
  }
  if (absl::Status s = ValidateGenerateRequest(*request, config_); !s.ok()) {
    metrics_.CountRequest(OutcomeOf(s, ""));
    return ToGrpc(s);
  }
  // Admission ends at the request's queue timeout, and in time to answer before the call's own
  // deadline, so the client hears RESOURCE_EXHAUSTED rather than DEADLINE_EXCEEDED.
  Clock::time_point admit_by =
      start + (request->queue_timeout_ms() > 0 ? std::chrono::milliseconds(request->queue_timeout_ms()) : options_.queue_timeout);
  const auto call_deadline = context->deadline();
  if (call_deadline != std::chrono::system_clock::time_point::max()) {
    const auto left = call_deadline - std::chrono::system_clock::now();
    admit_by = std::min(admit_by, start + std::chrono::duration_cast<Clock::duration>(left * 9 / 10));
  }
  auto submitted = state_.Submit(*request, admit_by, start);
  if (!submitted.ok()) return ToGrpc(submitted.status());
  std::shared_ptr<RequestChannel> channel = *submitted;

  int64_t completion_tokens = 0;
  double ttft_ms = -1;
  RequestChannel::News news;
  while (true) {
    const bool finished = channel->Take(Clock::now() + kCancelPoll, news);
    if (context->IsCancelled()) {
      state_.Cancel(channel->sequence());
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
    }
    if (finished && !news.status.ok()) return ToGrpc(news.status);
    if (news.tokens.empty() && !finished) continue;
    v1::GenerateResponse response;
    response.set_id(request->id());
    response.set_worker_rank(news.worker_rank);
    for (auto& t : news.tokens) *response.add_tokens() = std::move(t);
    completion_tokens += response.tokens_size();
    if (ttft_ms < 0 && response.tokens_size() > 0) {
      ttft_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      response.set_ttft_ms(ttft_ms);
    }
    if (finished) {
      response.set_finish_reason(news.finish_reason);
      response.mutable_usage()->set_prompt_tokens(request->prompt_ids_size());
      response.mutable_usage()->set_completion_tokens(completion_tokens);
      response.set_ttft_ms(std::max(ttft_ms, 0.0));
    }
    if (!writer->Write(response)) {  // the client went away
      state_.Cancel(channel->sequence());
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading");
    }
    if (finished) return grpc::Status::OK;
  }
}

grpc::Status ServingService::ClusterStatus(grpc::ServerContext* context, const v1::ClusterStatusRequest*,
                                           v1::ClusterStatusResponse* response) {
  if (grpc::Status s = CheckBearer(*context, bearer_token_); !s.ok()) return s;
  *response = state_.Status(Clock::now());
  return grpc::Status::OK;
}

}  // namespace daedalus
