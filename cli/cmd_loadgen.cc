// `daedalus loadgen`: closed-loop load on a cluster at several concurrencies; prints requests/s,
// output tokens/s, time to first token and inter-token latency (p50, p99) per level. With --mix,
// also faulty clients (load_mix.h) and the outcomes by kind; with --duration, a soak.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/load_mix.h"
#include "nlohmann/json.hpp"

namespace daedalus {

namespace {

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

struct Level {
  int concurrency = 0;
  int64_t sent = 0, ok = 0, tokens = 0;
  int64_t prompt_tokens = 0, cached_tokens = 0;  // of the requests that succeeded, as usage says
  std::map<std::string, int64_t> failed;  // by status code
  // With --mix: outcomes by request kind and status code; those a correct server would not
  // give; and calls that got no answer (no final message, or only the client's safety timeout).
  std::map<std::string, std::map<std::string, int64_t>> by_kind;
  int64_t unexpected = 0, unanswered = 0;
  double seconds = 0;
  std::vector<double> ttft_ms, itl_ms, latency_ms;
  std::vector<double> itl_short_ms;  // with long prompts in the mix: the other requests' ITL
};

// With --trace: one JSON line per request when it ends (the request, its status, its tokens
// and when each arrived, in seconds since the Unix epoch), for scripts that cut a run into
// windows (scripts/bench-elastic.sh).
class Trace {
 public:
  explicit Trace(const std::string& path) {
    if (!path.empty()) out_.open(path);
  }
  bool open() const { return out_.is_open(); }
  bool ok() const { return !out_.is_open() || out_.good(); }
  void Write(const v1::GenerateRequest& r, const grpc::Status& s, double sent, const std::vector<int32_t>& ids,
             const std::vector<double>& at) {
    if (!out_.is_open()) return;
    nlohmann::ordered_json j = {{"id", r.id()}, {"prompt_ids", r.prompt_ids()}, {"max_new_tokens", r.max_new_tokens()},
                                {"ignore_eos", r.ignore_eos()}, {"status", StatusCodeName(s.error_code())},
                                {"error", s.error_message()}, {"sent", sent}, {"generated_ids", ids}, {"token_times", at}};
    std::lock_guard<std::mutex> lock(mu_);
    out_ << j.dump() << "\n";
  }

 private:
  std::mutex mu_;
  std::ofstream out_;
};

double EpochSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Runs `concurrency` closed-loop clients; each takes the next request from `next` until it
// returns false.
Level RunLevel(v1::Serving::Stub& stub, const ClientFlags& client, const std::function<bool(PlannedRequest&)>& next,
               int concurrency, double timeout_s, Trace& trace) {
  Level level;
  level.concurrency = concurrency;
  std::mutex mu;
  const auto start = Clock::now();
  auto run = [&] {
    PlannedRequest planned;
    while (next(planned)) {
      grpc::ClientContext context;
      client.Prepare(context, planned.deadline_s > 0 ? planned.deadline_s : timeout_s);
      const auto sent = Clock::now();
      auto last = sent;
      std::vector<double> itl;
      double ttft = -1;
      int64_t tokens = 0;
      bool finished = false;
      const double sent_epoch = EpochSeconds();
      std::vector<int32_t> ids;
      std::vector<double> times;
      v1::Usage usage;
      auto reader = stub.Generate(&context, planned.request);
      v1::GenerateResponse response;
      while (reader->Read(&response)) {
        finished |= !response.finish_reason().empty();
        if (!response.finish_reason().empty()) usage = response.usage();
        if (response.tokens_size() == 0) continue;
        const auto now = Clock::now();
        if (ttft < 0) {
          ttft = std::chrono::duration<double, std::milli>(now - sent).count();
        } else {  // a message with several tokens spreads its gap over them
          const double gap = std::chrono::duration<double, std::milli>(now - last).count() / response.tokens_size();
          for (int t = 0; t < response.tokens_size(); ++t) itl.push_back(gap);
        }
        last = now;
        tokens += response.tokens_size();
        if (trace.open()) {
          const double at = EpochSeconds();
          for (const auto& t : response.tokens()) {
            ids.push_back(t.token_id());
            times.push_back(at);
          }
        }
        if (planned.cancel_after_tokens > 0 && tokens >= planned.cancel_after_tokens) context.TryCancel();
      }
      grpc::Status s = reader->Finish();
      trace.Write(planned.request, s, sent_epoch, ids, times);
      const double latency = std::chrono::duration<double, std::milli>(Clock::now() - sent).count();
      // No answer: a stream that ended OK without its last message, or one only our own safety
      // timeout ended (a request without a deadline of its own).
      const bool unanswered = (s.ok() && !finished) ||
                              (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && planned.deadline_s == 0);
      std::lock_guard<std::mutex> lock(mu);
      ++level.sent;
      ++level.by_kind[LoadKindName(planned.kind)][StatusCodeName(s.error_code())];
      level.unanswered += unanswered;
      level.unexpected += !unanswered && !ExpectedOutcome(planned.kind, s.error_code());
      if (!s.ok()) {
        ++level.failed[StatusCodeName(s.error_code())];
        continue;
      }
      ++level.ok;
      level.tokens += tokens;
      level.prompt_tokens += usage.prompt_tokens();
      level.cached_tokens += usage.cached_tokens();
      level.latency_ms.push_back(latency);
      if (ttft >= 0) level.ttft_ms.push_back(ttft);
      level.itl_ms.insert(level.itl_ms.end(), itl.begin(), itl.end());
      if (!planned.long_prompt) level.itl_short_ms.insert(level.itl_short_ms.end(), itl.begin(), itl.end());
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) threads.emplace_back(run);
  for (auto& t : threads) t.join();
  level.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return level;
}

}  // namespace

Command AddLoadgenCommand(CLI::App& app) {
  struct Flags {
    ClientFlags client;
    std::string concurrency = "1,16,64", write_prompts, mix, trace;
    int64_t prompt_len = 128, max_new_tokens = 64, requests = 0, shared_prefix_len = 0, shared_prefixes = 0;
    uint64_t seed = 1;
    bool stop_at_eos = false, json = false;
    double timeout_s = 600, duration_s = 0, long_fraction = 0;
    int64_t long_prompt_len = 2048;
  };
  auto f = std::make_shared<Flags>();
  f->client.Register(app);
  app.add_option("--concurrency", f->concurrency, "comma-separated numbers of requests in flight");
  app.add_option("--prompt-len", f->prompt_len,
                 "prompt tokens per request (random ids); with --shared-prefixes, the random suffix after the shared prompt");
  app.add_option("--shared-prefix-len", f->shared_prefix_len, "tokens of each shared system prompt (with --shared-prefixes)");
  app.add_option("--shared-prefixes", f->shared_prefixes,
                 "distinct system prompts (random ids, fixed by --seed); each request starts with one of them, drawn "
                 "uniformly, then --prompt-len random tokens");
  app.add_option("--max-new-tokens", f->max_new_tokens, "tokens generated per request");
  app.add_option("--requests", f->requests, "requests per level (default: 4 x concurrency, at least 16)");
  app.add_option("--seed", f->seed, "seed of the random prompts");
  app.add_flag("--stop-at-eos", f->stop_at_eos, "let requests end at the end-of-sequence token (default: run to length)");
  app.add_option("--write-prompts", f->write_prompts,
                 "write the largest level's requests as a prompts file, to run the same work with `run --prompts`");
  app.add_flag("--json", f->json, "one JSON object per level");
  app.add_option("--trace", f->trace,
                 "write one JSON line per request as it ends: the request, its status, its generated ids and when each "
                 "token arrived (seconds since the Unix epoch)");
  app.add_option("--timeout", f->timeout_s, "seconds before a call is abandoned");
  app.add_option("--duration", f->duration_s, "run each level for this many seconds instead of a number of requests");
  app.add_option("--mix", f->mix,
                 "besides plain requests, fractions of other kinds, e.g. cancel=0.05,deadline=0.05,invalid=0.05,oversized=0.02: "
                 "cancelled by the client after a few tokens, a deadline of 10-210 ms, one invalid field, a prompt over the "
                 "context; prints outcomes by kind and status, unexpected ones, and unanswered calls");
  app.add_option("--long-fraction", f->long_fraction,
                 "a share of the requests with --long-prompt-len prompts instead (the ITL of the others is printed apart: "
                 "how long prompts computed beside them stretch their decoding)");
  app.add_option("--long-prompt-len", f->long_prompt_len, "prompt tokens of the --long-fraction requests");
  return [f]() {
    if (!(f->long_fraction >= 0 && f->long_fraction <= 1)) return Fail("--long-fraction must be in [0, 1]");
    std::vector<int> levels;
    for (absl::string_view part : absl::StrSplit(f->concurrency, ',')) {
      int c = 0;
      if (!absl::SimpleAtoi(part, &c) || c < 1) return Fail(absl::StrCat("--concurrency: \"", std::string(part), "\" is not a positive number"));
      levels.push_back(c);
    }
    if (f->shared_prefixes < 0 || f->shared_prefix_len < 0 || (f->shared_prefixes > 0) != (f->shared_prefix_len > 0)) {
      return Fail("--shared-prefixes K and --shared-prefix-len N go together, both positive");
    }
    auto mix = ParseLoadMix(f->mix);
    if (!mix.ok()) return Fail(std::string(mix.status().message()));
    const bool mixed = !f->mix.empty();
    auto stub = f->client.Stub();
    if (!stub.ok()) return Fail(std::string(stub.status().message()));
    v1::ClusterStatusResponse status;
    {
      grpc::ClientContext context;
      f->client.Prepare(context, 10);
      grpc::Status s = (*stub)->ClusterStatus(&context, v1::ClusterStatusRequest{}, &status);
      if (!s.ok()) return Fail(absl::StrCat("asking the cluster for its model: ", s.error_message()));
    }
    if (status.state() != "serving") return Fail(absl::StrCat("the cluster is ", status.state(), ": ", status.detail()));
    Trace trace(f->trace);
    if (!f->trace.empty() && !trace.open()) return Fail(absl::StrCat(f->trace, ": cannot write"));
    const std::string shared = f->shared_prefixes > 0 ? absl::StrCat(f->shared_prefixes, " shared prefixes of ",
                                                                     f->shared_prefix_len, " tokens + ")
                                                      : "";
    std::printf("loadgen: %s, model %s with %d workers, prompt %s%lld tokens, %lld new tokens; client on %s\n",
                f->client.server.c_str(), status.model().c_str(), status.world_size(), shared.c_str(),
                static_cast<long long>(f->prompt_len), static_cast<long long>(f->max_new_tokens), CpuModel().c_str());
    if (!f->json) {
      std::printf("%11s %8s %6s %8s %9s %12s %9s %9s %8s %8s\n", "concurrency", "requests", "failed", "seconds", "req/s",
                  "output tok/s", "ttft p50", "ttft p99", "itl p50", "itl p99");
    }
    std::mt19937_64 rng(f->seed);
    const LoadShape shape{status.vocab_size(), status.max_position_embeddings(), f->prompt_len, f->max_new_tokens,
                          f->stop_at_eos,
                          SharedPrefixes(f->shared_prefixes, f->shared_prefix_len, status.vocab_size(), f->seed),
                          f->long_fraction, f->long_prompt_len};
    for (size_t li = 0; li < levels.size(); ++li) {
      const int c = levels[li];
      const int64_t n = f->requests > 0 ? f->requests : std::max<int64_t>(16, 4 * c);
      std::vector<PlannedRequest> requests;
      std::function<bool(PlannedRequest&)> next;
      std::atomic<size_t> taken{0};
      std::mutex rng_mu;
      if (f->duration_s > 0) {  // drawn as they go, until the time is up
        const auto until = Clock::now() + std::chrono::microseconds(static_cast<int64_t>(f->duration_s * 1e6));
        next = [&, until](PlannedRequest& p) {
          if (Clock::now() >= until) return false;
          std::lock_guard<std::mutex> lock(rng_mu);
          p = PlanRequest(*mix, shape, rng, absl::StrCat(taken++));
          return true;
        };
      } else {
        for (int64_t i = 0; i < n; ++i) requests.push_back(PlanRequest(*mix, shape, rng, absl::StrCat(i)));
        next = [&](PlannedRequest& p) {
          const size_t i = taken++;
          if (i >= requests.size()) return false;
          p = requests[i];
          return true;
        };
      }
      if (!f->write_prompts.empty() && li + 1 == levels.size()) {
        std::ofstream out(f->write_prompts);
        for (const auto& p : requests) {
          const auto& r = p.request;
          nlohmann::json j = {{"id", r.id()}, {"prompt_ids", r.prompt_ids()}, {"max_new_tokens", r.max_new_tokens()},
                              {"ignore_eos", r.ignore_eos()}};
          out << j.dump() << "\n";
        }
        if (!out) return Fail(absl::StrCat(f->write_prompts, ": write failed"));
      }
      Level l = RunLevel(**stub, f->client, next, c, f->timeout_s, trace);
      if (!trace.ok()) return Fail(absl::StrCat(f->trace, ": write failed"));
      int64_t failed = 0;
      std::string failures;
      for (const auto& [code, k] : l.failed) {
        failed += k;
        absl::StrAppend(&failures, failures.empty() ? "" : ", ", code, " ", k);
      }
      const double rps = l.ok / l.seconds, tps = l.tokens / l.seconds;
      if (f->json) {
        nlohmann::ordered_json j = {{"concurrency", c}, {"requests", l.sent}, {"ok", l.ok}, {"failed", l.failed},
                                    {"seconds", l.seconds}, {"requests_per_s", rps}, {"output_tokens_per_s", tps},
                                    {"ttft_ms_p50", Percentile(l.ttft_ms, 0.5)}, {"ttft_ms_p99", Percentile(l.ttft_ms, 0.99)},
                                    {"itl_ms_p50", Percentile(l.itl_ms, 0.5)}, {"itl_ms_p99", Percentile(l.itl_ms, 0.99)},
                                    {"prompt_tokens", l.prompt_tokens}, {"cached_tokens", l.cached_tokens}};
        if (f->long_fraction > 0) {
          j["itl_short_ms_p50"] = Percentile(l.itl_short_ms, 0.5);
          j["itl_short_ms_p99"] = Percentile(l.itl_short_ms, 0.99);
        }
        if (mixed) {
          j["by_kind"] = l.by_kind;
          j["unexpected"] = l.unexpected;
          j["unanswered"] = l.unanswered;
          for (double q : {0.5, 0.9, 0.99}) j[absl::StrCat("latency_ms_p", static_cast<int>(q * 100))] = Percentile(l.latency_ms, q);
        }
        std::printf("%s\n", j.dump().c_str());
      } else {
        std::printf("%11d %8lld %6lld %8.2f %9.2f %12.1f %7.1fms %7.1fms %6.1fms %6.1fms%s\n", c, static_cast<long long>(l.sent),
                    static_cast<long long>(failed), l.seconds, rps, tps, Percentile(l.ttft_ms, 0.5), Percentile(l.ttft_ms, 0.99),
                    Percentile(l.itl_ms, 0.5), Percentile(l.itl_ms, 0.99), failures.empty() ? "" : ("  (" + failures + ")").c_str());
        if (f->long_fraction > 0) {
          std::printf("%11s requests with short prompts: itl p50 %.1f ms, p99 %.1f ms\n", "", Percentile(l.itl_short_ms, 0.5),
                      Percentile(l.itl_short_ms, 0.99));
        }
        if (l.cached_tokens > 0) {
          std::printf("%11s prefix cache: %lld of %lld prompt tokens (%.1f%%)\n", "", static_cast<long long>(l.cached_tokens),
                      static_cast<long long>(l.prompt_tokens), 100.0 * l.cached_tokens / l.prompt_tokens);
        }
        if (mixed) {
          for (const auto& [kind, codes] : l.by_kind) {
            std::string line;
            for (const auto& [code, k] : codes) absl::StrAppend(&line, line.empty() ? "" : ", ", code, " ", k);
            std::printf("%11s %-9s %s\n", "", kind.c_str(), line.c_str());
          }
          std::printf("%11s unexpected %lld, unanswered %lld; latency p50 %.1f ms, p99 %.1f ms\n", "",
                      static_cast<long long>(l.unexpected), static_cast<long long>(l.unanswered), Percentile(l.latency_ms, 0.5),
                      Percentile(l.latency_ms, 0.99));
        }
      }
      std::fflush(stdout);
    }
    return 0;
  };
}

}  // namespace daedalus
