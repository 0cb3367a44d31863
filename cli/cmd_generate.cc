// `daedalus generate`: a streaming client of the Serving API, one prompt or a prompts file
// with many requests in flight.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/request_io.h"

namespace daedalus {

std::string StatusCodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

namespace {

struct Outcome {
  std::string id;
  std::vector<int32_t> generated_ids;
  std::string text;
  nlohmann::json logprobs = nlohmann::json::array();
  std::string finish_reason;
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
  double ttft_ms = -1;
  int worker_rank = -1;
  grpc::Status status;
};

// One streaming call; `on_tokens` sees each message's new tokens as they arrive.
Outcome Call(v1::Serving::Stub& stub, const ClientFlags& client, const v1::GenerateRequest& request, double timeout_s,
             const std::function<void(const v1::GenerateResponse&)>& on_tokens) {
  Outcome out;
  out.id = request.id();
  grpc::ClientContext context;
  client.Prepare(context, timeout_s);
  const auto start = std::chrono::steady_clock::now();
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (response.tokens_size() > 0 && out.ttft_ms < 0) {
      out.ttft_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    }
    out.worker_rank = response.worker_rank();
    for (const auto& t : response.tokens()) {
      out.generated_ids.push_back(t.token_id());
      if (request.logprobs() > 0) {
        nlohmann::json top = nlohmann::json::array();
        for (const auto& l : t.top_logprobs()) top.push_back({{"token_id", l.token_id()}, {"logprob", l.logprob()}});
        out.logprobs.push_back({{"token_id", t.token_id()}, {"logprob", t.logprob()}, {"top_logprobs", top}});
      }
    }
    out.text += response.text();
    if (on_tokens) on_tokens(response);
    if (!response.finish_reason().empty()) {
      out.finish_reason = response.finish_reason();
      out.prompt_tokens = response.usage().prompt_tokens();
      out.completion_tokens = response.usage().completion_tokens();
      out.cached_tokens = response.usage().cached_tokens();
    }
  }
  out.status = reader->Finish();
  return out;
}

nlohmann::ordered_json OutcomeJson(const Outcome& o, bool logprobs, bool text) {
  nlohmann::ordered_json j;
  j["id"] = o.id;
  if (!o.status.ok()) {
    j["error"] = {{"code", StatusCodeName(o.status.error_code())}, {"message", o.status.error_message()}};
    j["generated_ids"] = o.generated_ids;
    return j;
  }
  j["generated_ids"] = o.generated_ids;
  if (text) j["text"] = o.text;
  j["finish_reason"] = o.finish_reason;
  j["usage"] = {{"prompt_tokens", o.prompt_tokens}, {"completion_tokens", o.completion_tokens}, {"cached_tokens", o.cached_tokens}};
  j["ttft_ms"] = o.ttft_ms;
  j["worker_rank"] = o.worker_rank;
  if (logprobs) j["logprobs"] = o.logprobs;
  return j;
}

}  // namespace

Command AddGenerateCommand(CLI::App& app) {
  struct Flags {
    ClientFlags client;
    std::string prompt_ids, prompts, prompt;
    std::vector<std::string> stop;
    Request defaults;
    bool ignore_eos = false, json = false;
    int concurrency = 1;
    double timeout_s = 0;
    int64_t queue_timeout_ms = 0;
  };
  auto f = std::make_shared<Flags>();
  f->client.Register(app);
  auto* ids = app.add_option("--prompt-ids", f->prompt_ids, "one prompt: comma-separated token ids");
  auto* file = app.add_option("--prompts", f->prompts, "JSON lines of requests (the format of `run --prompts`)");
  auto* text = app.add_option("--prompt", f->prompt, "one prompt as text (the checkpoint's tokenizer encodes it)");
  ids->excludes(file);
  text->excludes(ids)->excludes(file);
  app.add_option("--stop", f->stop, "end when the text contains this string (repeatable)");
  app.add_option("--max-new-tokens", f->defaults.max_new_tokens, "tokens to generate");
  app.add_option("--temperature", f->defaults.sampling.temperature, "0 is greedy");
  app.add_option("--top-p", f->defaults.sampling.top_p, "nucleus sampling mass");
  app.add_option("--top-k", f->defaults.sampling.top_k, "sample among the k most likely (0: all)");
  app.add_option("--seed", f->defaults.sampling.seed, "sampling seed");
  app.add_option("--logprobs", f->defaults.logprobs, "report the top N log-probabilities of each token");
  app.add_flag("--ignore-eos", f->ignore_eos, "do not stop at the model's end-of-sequence token");
  app.add_flag("--json", f->json, "one JSON object per request on its own line");
  app.add_option("--concurrency", f->concurrency, "requests in flight at once (with --prompts)");
  app.add_option("--timeout", f->timeout_s, "seconds before a call is abandoned (its deadline); 0: none");
  app.add_option("--queue-timeout-ms", f->queue_timeout_ms, "how long a request may wait for admission (0: the server's default)");
  return [f, ids, file, text]() {
    if (ids->count() == 0 && file->count() == 0 && text->count() == 0) {
      return Fail("generate needs --prompt, --prompt-ids or --prompts");
    }
    auto stub = f->client.Stub();
    if (!stub.ok()) return Fail(std::string(stub.status().message()));
    Request defaults = f->defaults;
    defaults.stop_at_eos = !f->ignore_eos;
    std::vector<v1::GenerateRequest> requests;
    if (text->count() > 0) {
      Request r = defaults;
      r.id = "1";
      v1::GenerateRequest g = ToGenerateRequest(r);
      g.set_prompt_text(f->prompt);
      g.set_return_text(true);
      requests.push_back(g);
    } else if (ids->count() > 0) {
      auto parsed = ParseIdList(f->prompt_ids);
      if (!parsed.ok()) return Fail(absl::StrCat("--prompt-ids: ", parsed.status().message()));
      Request r = defaults;
      r.id = "1";
      r.prompt_ids = *parsed;
      requests.push_back(ToGenerateRequest(r));
    } else {
      std::ifstream in(f->prompts);
      if (!in) return Fail(absl::StrCat(f->prompts, ": cannot open"));
      std::string line;
      for (int64_t n = 1; std::getline(in, line); ++n) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        Request r = defaults;
        r.id = absl::StrCat(n);
        auto parsed = ParseRequestLine(line, r, &r.id);
        if (!parsed.ok()) return Fail(absl::StrCat(f->prompts, " line ", n, ": ", parsed.status().message()));
        requests.push_back(ToGenerateRequest(*parsed));
      }
    }
    for (auto& r : requests) {
      r.set_queue_timeout_ms(f->queue_timeout_ms);
      for (const auto& s : f->stop) r.add_stop(s);
      if (!f->stop.empty()) r.set_return_text(true);
    }

    std::mutex print_mu;
    std::atomic<size_t> next{0};
    std::atomic<int> failures{0};
    const bool stream_text = !f->json && requests.size() == 1;
    auto worker = [&] {
      for (size_t i; (i = next++) < requests.size();) {
        auto on_tokens = [&](const v1::GenerateResponse& response) {
          if (!stream_text) return;
          if (requests[i].return_text()) {
            std::fwrite(response.text().data(), 1, response.text().size(), stdout);
          } else {
            for (const auto& t : response.tokens()) std::printf("%d ", t.token_id());
          }
          std::fflush(stdout);
        };
        Outcome o = Call(**stub, f->client, requests[i], f->timeout_s, on_tokens);
        std::lock_guard<std::mutex> lock(print_mu);
        if (!o.status.ok()) ++failures;
        if (f->json) {
          std::printf("%s\n", OutcomeJson(o, requests[i].logprobs() > 0, requests[i].return_text()).dump().c_str());
        } else if (stream_text) {
          std::printf("\n");
          if (o.status.ok()) {
            std::fprintf(stderr, "finish_reason %s, %lld tokens, first after %.1f ms, worker rank %d\n",
                         o.finish_reason.c_str(), static_cast<long long>(o.completion_tokens), o.ttft_ms, o.worker_rank);
          }
        } else if (o.status.ok()) {
          std::printf("%s:", o.id.c_str());
          for (int32_t t : o.generated_ids) std::printf(" %d", t);
          std::printf(" (%s)\n", o.finish_reason.c_str());
        }
        if (!o.status.ok() && !f->json) {
          std::fprintf(stderr, "daedalus: error: request %s: %s: %s\n", o.id.c_str(),
                       StatusCodeName(o.status.error_code()).c_str(), o.status.error_message().c_str());
        }
        std::fflush(stdout);
      }
    };
    std::vector<std::thread> threads;
    for (int t = 0; t < std::max(1, f->concurrency); ++t) threads.emplace_back(worker);
    for (auto& t : threads) t.join();
    return failures == 0 ? 0 : 1;
  };
}

}  // namespace daedalus
