#include "planner/closed_loop.h"

#include <algorithm>
#include <deque>
#include <vector>

namespace daedalus {
namespace {

struct Sequence {
  double sent = 0;           // when its client sent it
  int64_t ready_step = 0;    // the first step it can join
  int64_t prompt_left = 0;   // tokens still to prefill
  int64_t generated = 0;
  bool first_wave = false;
};

}  // namespace

ClosedLoopResult SimulateClosedLoop(const ClosedLoopLoad& load, const ClosedLoopCosts& costs, int64_t requests) {
  std::vector<std::deque<Sequence>> workers(std::max<int64_t>(load.workers, 1));  // in admission order
  std::deque<Sequence> sent;  // at the coordinator, not admitted yet
  for (int64_t c = 0; c < load.clients; ++c) sent.push_back({0.0, 0, load.prompt_len, 0, true});
  std::vector<double> ttft;
  double now = 0;
  int64_t ended = 0;
  const int64_t chunk = std::max<int64_t>(1, std::min(load.prefill_chunk, load.max_batch_tokens));
  for (int64_t k = 0; ended < requests; ++k) {
    // Admission at the step boundary: each to the worker running the fewest (the lowest rank on
    // a tie), as the most free KV picks when every request reserves the same. A request sent at
    // the end of a step reaches its worker while the next step runs, so it joins the one after;
    // workers with nothing to run wait for it instead.
    const bool idle = std::all_of(workers.begin(), workers.end(), [](const auto& w) { return w.empty(); });
    for (auto it = sent.begin(); it != sent.end();) {
      if (it->ready_step > k && !idle) {
        ++it;
        continue;
      }
      auto fewest = std::min_element(workers.begin(), workers.end(),
                                     [](const auto& a, const auto& b) { return a.size() < b.size(); });
      fewest->push_back(*it);
      it = sent.erase(it);
    }
    // Each worker's step: decode tokens first, then prompt chunks within the token budget.
    double step = 0;
    std::vector<std::vector<int64_t>> prefilled(workers.size());
    for (size_t w = 0; w < workers.size(); ++w) {
      int64_t budget = load.max_batch_tokens, decode = 0, prompt = 0;
      for (const Sequence& s : workers[w]) decode += s.prompt_left == 0;
      budget -= decode;
      prefilled[w].assign(workers[w].size(), 0);
      for (size_t i = 0; i < workers[w].size() && budget > 0; ++i) {
        const Sequence& s = workers[w][i];
        if (s.prompt_left == 0) continue;
        prefilled[w][i] = std::min({s.prompt_left, chunk, budget});
        budget -= prefilled[w][i];
        prompt += prefilled[w][i];
      }
      step = std::max(step, (decode > 0 ? costs.decode_step_s : 0.0) + static_cast<double>(prompt) * costs.prefill_per_token_s);
    }
    if (!(step > 0)) break;  // nothing to compute: costs of zero
    now += step;
    for (size_t w = 0; w < workers.size(); ++w) {
      std::deque<Sequence> still;
      for (size_t i = 0; i < workers[w].size(); ++i) {
        Sequence s = workers[w][i];
        if (s.prompt_left == 0) {
          ++s.generated;
        } else if (prefilled[w][i] > 0) {
          s.prompt_left -= prefilled[w][i];
          if (s.prompt_left == 0) {  // its last prompt token: the first generated one
            ++s.generated;
            if (!s.first_wave) ttft.push_back(now - s.sent);
          }
        }
        if (s.generated >= load.max_new_tokens) {  // ends; its client sends the next at once
          ended += s.first_wave ? 0 : 1;
          sent.push_back({now, k + 2, load.prompt_len, 0, false});
        } else {
          still.push_back(s);
        }
      }
      workers[w] = std::move(still);
    }
  }
  ClosedLoopResult r;
  r.requests = static_cast<int64_t>(ttft.size());
  if (!ttft.empty()) {
    std::sort(ttft.begin(), ttft.end());
    const size_t n = ttft.size();
    r.ttft_p50_s = n % 2 == 1 ? ttft[n / 2] : (ttft[n / 2 - 1] + ttft[n / 2]) / 2;
  }
  return r;
}

}  // namespace daedalus
