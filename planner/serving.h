// Closed-loop serving on a cluster whose hardware file was calibrated from measurements (`plan
// --calibrate`): C clients, each sending a prompt of P tokens for N new tokens and the next
// request when one ends, spread over the cluster's W workers (devices) as the coordinator shards
// them (C / W sequences each). Predicts output tokens/s, TTFT and ITL, as `loadgen` measures
// them on `serve --workers W`.
//
// Each worker cycles its b = C / W sequences: N - 1 decode steps of batch b, and b prefills of
// P tokens, in lockstep with the others (a step lasts as long as the slowest worker's):
//   cycle = (N - 1) · decode_step(b) + b · prefill(P),  output = W · b · N / cycle
// (with C < W, only C workers have a sequence). decode_step and prefill are MakePlan's step
// times for this deployment (expert parallelism over the W workers, one micro-batch, the
// measured all-to-all), with the measured efficiencies in place of the GPU kernel factors:
// decode steps run at the calibrated share of the roofline for their batch (interpolated in
// log batch between the measured ones), prefill GEMMs at the calibrated prefill GFLOP/s.
// ITL = decode_step(b). TTFT is the median of a step-by-step simulation of the closed loop
// (planner/closed_loop.h) with these step costs: waves of prompts from clients whose requests
// ended together, prefilled max_batch_tokens at a time beside the decode tokens.
// A CPU node's devices share its memory: with the node's figures in the hardware file (`bench`
// with every core busy), each device's memory traffic runs at 1 / devices_per_node of the node's
// bandwidth, at the decode share measured that way; its compute at its own measured figures.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/statusor.h"
#include "core/cluster_config.h"
#include "core/model_config.h"
#include "planner/plan.h"

namespace daedalus {

struct ServingLoad {
  int64_t concurrency = 1;
  int64_t prompt_len = 128;
  int64_t max_new_tokens = 64;
  int64_t max_batch_tokens = 512, prefill_chunk = 512;  // the workers' (--max-batch-tokens, --prefill-chunk)
};

struct ServingPrediction {
  ServingLoad load;
  int64_t workers = 0, busy_workers = 0, batch_per_worker = 0;
  double decode_step_s = 0, prefill_s = 0;
  double output_tokens_per_s = 0, ttft_s = 0, itl_s = 0;
};

// The share measured at `batch`, interpolated in log batch between the nearest measured ones
// (the end values beyond them).
double ShareAt(const std::map<int64_t, double>& shares, int64_t batch);
// The efficiencies of a calibrated hardware file for a decode step of `batch` or for prefill
// (batch 0); InvalidArgument when the file has no measured figures.
absl::StatusOr<Efficiency> CalibratedEfficiency(const HardwareSpec& hw, int64_t batch);

absl::StatusOr<ServingPrediction> PredictServing(const ModelConfig& config, const ClusterConfig& cluster,
                                                 const Workload& base, const ServingLoad& load);

}  // namespace daedalus
