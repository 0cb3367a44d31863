// `daedalus loadgen`: closed-loop load on a cluster at several concurrencies; prints requests/s,
// output tokens/s, time to first token and inter-token latency (p50, p99) per level.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/client.h"
#include "cli/commands.h"
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
  int64_t ok = 0, tokens = 0;
  std::map<std::string, int64_t> failed;  // by status code
  double seconds = 0;
  std::vector<double> ttft_ms, itl_ms;
};

Level RunLevel(v1::Serving::Stub& stub, const ClientFlags& client, const std::vector<v1::GenerateRequest>& requests,
               int concurrency, double timeout_s) {
  Level level;
  level.concurrency = concurrency;
  std::mutex mu;
  std::atomic<size_t> next{0};
  const auto start = Clock::now();
  auto run = [&] {
    for (size_t i; (i = next++) < requests.size();) {
      grpc::ClientContext context;
      client.Prepare(context, timeout_s);
      const auto sent = Clock::now();
      auto last = sent;
      std::vector<double> itl;
      double ttft = -1;
      int64_t tokens = 0;
      auto reader = stub.Generate(&context, requests[i]);
      v1::GenerateResponse response;
      while (reader->Read(&response)) {
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
      }
      grpc::Status s = reader->Finish();
      std::lock_guard<std::mutex> lock(mu);
      if (!s.ok()) {
        ++level.failed[StatusCodeName(s.error_code())];
        continue;
      }
      ++level.ok;
      level.tokens += tokens;
      if (ttft >= 0) level.ttft_ms.push_back(ttft);
      level.itl_ms.insert(level.itl_ms.end(), itl.begin(), itl.end());
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
    std::string concurrency = "1,16,64", write_prompts;
    int64_t prompt_len = 128, max_new_tokens = 64, requests = 0;
    uint64_t seed = 1;
    bool stop_at_eos = false, json = false;
    double timeout_s = 600;
  };
  auto f = std::make_shared<Flags>();
  f->client.Register(app);
  app.add_option("--concurrency", f->concurrency, "comma-separated numbers of requests in flight");
  app.add_option("--prompt-len", f->prompt_len, "prompt tokens per request (random ids)");
  app.add_option("--max-new-tokens", f->max_new_tokens, "tokens generated per request");
  app.add_option("--requests", f->requests, "requests per level (default: 4 x concurrency, at least 16)");
  app.add_option("--seed", f->seed, "seed of the random prompts");
  app.add_flag("--stop-at-eos", f->stop_at_eos, "let requests end at the end-of-sequence token (default: run to length)");
  app.add_option("--write-prompts", f->write_prompts,
                 "write the largest level's requests as a prompts file, to run the same work with `run --prompts`");
  app.add_flag("--json", f->json, "one JSON object per level");
  app.add_option("--timeout", f->timeout_s, "seconds before a call is abandoned");
  return [f]() {
    std::vector<int> levels;
    for (absl::string_view part : absl::StrSplit(f->concurrency, ',')) {
      int c = 0;
      if (!absl::SimpleAtoi(part, &c) || c < 1) return Fail(absl::StrCat("--concurrency: \"", std::string(part), "\" is not a positive number"));
      levels.push_back(c);
    }
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
    std::printf("loadgen: %s, model %s with %d workers, prompt %lld tokens, %lld new tokens; client on %s\n",
                f->client.server.c_str(), status.model().c_str(), status.world_size(), static_cast<long long>(f->prompt_len),
                static_cast<long long>(f->max_new_tokens), CpuModel().c_str());
    if (!f->json) {
      std::printf("%11s %8s %6s %8s %9s %12s %9s %9s %8s %8s\n", "concurrency", "requests", "failed", "seconds", "req/s",
                  "output tok/s", "ttft p50", "ttft p99", "itl p50", "itl p99");
    }
    std::mt19937_64 rng(f->seed);
    std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(status.vocab_size() - 1));
    for (size_t li = 0; li < levels.size(); ++li) {
      const int c = levels[li];
      const int64_t n = f->requests > 0 ? f->requests : std::max<int64_t>(16, 4 * c);
      std::vector<v1::GenerateRequest> requests(n);
      for (int64_t i = 0; i < n; ++i) {
        auto& r = requests[i];
        r.set_id(absl::StrCat(i));
        for (int64_t t = 0; t < f->prompt_len; ++t) r.add_prompt_ids(token(rng));
        r.set_max_new_tokens(f->max_new_tokens);
        r.set_ignore_eos(!f->stop_at_eos);
      }
      if (!f->write_prompts.empty() && li + 1 == levels.size()) {
        std::ofstream out(f->write_prompts);
        for (const auto& r : requests) {
          nlohmann::json j = {{"id", r.id()}, {"prompt_ids", r.prompt_ids()}, {"max_new_tokens", r.max_new_tokens()},
                              {"ignore_eos", r.ignore_eos()}};
          out << j.dump() << "\n";
        }
        if (!out) return Fail(absl::StrCat(f->write_prompts, ": write failed"));
      }
      Level l = RunLevel(**stub, f->client, requests, c, f->timeout_s);
      int64_t failed = 0;
      std::string failures;
      for (const auto& [code, k] : l.failed) {
        failed += k;
        absl::StrAppend(&failures, failures.empty() ? "" : ", ", code, " ", k);
      }
      const double rps = l.ok / l.seconds, tps = l.tokens / l.seconds;
      if (f->json) {
        nlohmann::ordered_json j = {{"concurrency", c}, {"requests", n}, {"ok", l.ok}, {"failed", l.failed},
                                    {"seconds", l.seconds}, {"requests_per_s", rps}, {"output_tokens_per_s", tps},
                                    {"ttft_ms_p50", Percentile(l.ttft_ms, 0.5)}, {"ttft_ms_p99", Percentile(l.ttft_ms, 0.99)},
                                    {"itl_ms_p50", Percentile(l.itl_ms, 0.5)}, {"itl_ms_p99", Percentile(l.itl_ms, 0.99)}};
        std::printf("%s\n", j.dump().c_str());
      } else {
        std::printf("%11d %8lld %6lld %8.2f %9.2f %12.1f %7.1fms %7.1fms %6.1fms %6.1fms%s\n", c, static_cast<long long>(n),
                    static_cast<long long>(failed), l.seconds, rps, tps, Percentile(l.ttft_ms, 0.5), Percentile(l.ttft_ms, 0.99),
                    Percentile(l.itl_ms, 0.5), Percentile(l.itl_ms, 0.99), failures.empty() ? "" : ("  (" + failures + ")").c_str());
      }
      std::fflush(stdout);
    }
    return 0;
  };
}

}  // namespace daedalus
