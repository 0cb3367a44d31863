// The closed-loop step simulation (planner/closed_loop.h) on loads whose steps can be counted by
// hand: one client, a prompt cut into chunks, a wave of prompts prefilled beside decode tokens,
// and workers in lockstep waiting for the slowest.
#include "planner/closed_loop.h"

#include <gtest/gtest.h>

namespace daedalus {
namespace {

constexpr ClosedLoopCosts kCosts{0.01, 0.001};  // a decode step 10 ms, a prompt token 1 ms

TEST(ClosedLoop, OneClientWaitsForItsOwnPrefillOnly) {
  // Each request's step holds its prompt alone: TTFT = 100 prompt tokens.
  const auto r = SimulateClosedLoop({1, 1, 100, 8, 512, 512}, kCosts, 20);
  EXPECT_EQ(r.requests, 20);
  EXPECT_NEAR(r.ttft_p50_s, 0.100, 1e-12);
  // A 300-token prompt in chunks of 128: three steps, 128 + 128 + 44 tokens.
  EXPECT_NEAR(SimulateClosedLoop({1, 1, 300, 1, 512, 128}, kCosts, 10).ttft_p50_s, 0.300, 1e-12);
}

TEST(ClosedLoop, AWaveOfPromptsIsPrefilledBesideTheDecodeTokens) {
  // Four clients, one worker, two prompts a step (budget 204 = 2 prompts + 4 decode tokens),
  // five tokens each. A and B are prefilled a step before C and D, so they end a step earlier:
  // their next requests reach the worker while C and D's last decode step runs (10 ms) and join
  // the step after it, beside C and D's, sent when the worker had nothing left to run. That
  // step prefills A, B and 4 tokens of C (204 ms): TTFT 214 ms; C and D finish a step later
  // (206 ms more): 410 ms. The median: 312 ms.
  const auto r = SimulateClosedLoop({4, 1, 100, 5, 204, 512}, kCosts, 40);
  EXPECT_NEAR(r.ttft_p50_s, 0.312, 1e-12);
  // With room for all four prompts in one step the waves stay whole: 400 ms each, no decode
  // tokens beside them (every sequence of the wave ended in the same step).
  EXPECT_NEAR(SimulateClosedLoop({4, 1, 100, 5, 512, 512}, kCosts, 40).ttft_p50_s, 0.400, 1e-12);
}

TEST(ClosedLoop, WorkersInLockstepWaitForTheSlowest) {
  // Three clients over two workers: two prompts on worker 0, one on worker 1. Worker 1's lone
  // prompt waits for worker 0's step of two: 200 ms, not 100.
  const auto r = SimulateClosedLoop({3, 2, 100, 3, 512, 512}, kCosts, 30);
  EXPECT_NEAR(r.ttft_p50_s, 0.200, 1e-12);
}

}  // namespace
}  // namespace daedalus
