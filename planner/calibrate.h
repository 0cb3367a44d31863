// `daedalus plan --calibrate`: a hardware file (cluster-configs/hardware/ format) made from what
// `daedalus bench --json` and `daedalus bench-a2a --json` measured on the user's own machine,
// each number with a comment saying which measurement, from which file, it came from.
//
// - bench (one or more runs of one machine and kernel tier; several runs give the median of
//   each figure): memory, DRAM read bandwidth, float and bf16 peaks of the tier, the engine's
//   prefill GFLOP/s and decode share of the roofline by batch.
// - bench-a2a run within one host: intra_node_gb_s (our exchange's bandwidth at the largest
//   token count, dispatch and combine averaged) and intra_node_latency_us (its time at the
//   smallest token count less those bytes at that bandwidth); run across hosts: nic_gb_s and
//   nic_latency_us the same way. Without a cross-host run the NIC keys repeat the within-host
//   figures, and the file says so (a one-node cluster never uses them).
//
// Refused, naming the file and the key: text that is not JSON, a file that is neither output,
// a missing or mistyped key, a bandwidth or peak that is not positive, bench runs of different
// machines or tiers, no bench run, no within-host bench-a2a run.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace daedalus {

struct CalibrationFile {
  std::string path;  // names the file in comments and errors
  std::string text;  // its contents
};

absl::StatusOr<std::string> CalibrateHardware(const std::vector<CalibrationFile>& files);

}  // namespace daedalus
