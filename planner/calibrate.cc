#include "planner/calibrate.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace daedalus {
namespace {

using json = nlohmann::json;

absl::Status KeyError(const std::string& path, const std::string& key, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": key \"", key, "\" ", what));
}

// The value at a dotted path, checked for its type.
absl::StatusOr<json> At(const json& j, const std::string& path, const std::string& key, json::value_t type) {
  const json* at = &j;
  size_t from = 0;
  while (true) {
    const size_t dot = key.find('.', from);
    const std::string part = key.substr(from, dot == std::string::npos ? std::string::npos : dot - from);
    size_t index = 0;
    if (at->is_array() && absl::SimpleAtoi(part, &index) && index < at->size()) {
      at = &(*at)[index];
    } else {
      if (!at->is_object() || !at->contains(part)) return KeyError(path, key, "is missing");
      at = &(*at)[part];
    }
    if (dot == std::string::npos) break;
    from = dot + 1;
  }
  const bool ok = type == json::value_t::number_float ? at->is_number()
                  : type == json::value_t::string     ? at->is_string()
                  : type == json::value_t::object     ? at->is_object()
                  : type == json::value_t::array      ? at->is_array()
                                                      : at->is_number_integer();
  if (!ok) {
    const char* want = type == json::value_t::number_float ? "a number"
                       : type == json::value_t::string     ? "a string"
                       : type == json::value_t::object     ? "an object"
                       : type == json::value_t::array      ? "an array"
                                                           : "an integer";
    return KeyError(path, key, absl::StrCat("must be ", want, ", found ", at->dump()));
  }
  return *at;
}

absl::StatusOr<double> Positive(const json& j, const std::string& path, const std::string& key) {
  ASSIGN_OR_RETURN(json v, At(j, path, key, json::value_t::number_float));
  const double d = v.get<double>();
  if (!(d > 0)) return KeyError(path, key, absl::StrCat("must be positive, found ", v.dump()));
  return d;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// What the files are, by name, for comments: "a.json" or "median of a.json, b.json".
std::string From(const std::vector<std::string>& names) {
  return names.size() == 1 ? names[0] : absl::StrCat("median of ", absl::StrJoin(names, ", "));
}

struct EngineRun {
  std::string name, cpu, isa;
  double threads, memory_gib, bandwidth_gbs, fp32_gflops, bf16_gflops, prefill_gflops, prefill_tokens;
  std::map<int64_t, double> decode_share;
};

absl::StatusOr<EngineRun> ReadEngineRun(const json& j, const std::string& path, const std::string& name) {
  EngineRun r;
  r.name = name;
  ASSIGN_OR_RETURN(json cpu, At(j, path, "machine.cpu", json::value_t::string));
  ASSIGN_OR_RETURN(json isa, At(j, path, "machine.isa", json::value_t::string));
  ASSIGN_OR_RETURN(json threads, At(j, path, "machine.threads", json::value_t::number_integer));
  r.cpu = cpu.get<std::string>();
  r.isa = isa.get<std::string>();
  r.threads = threads.get<double>();
  ASSIGN_OR_RETURN(r.memory_gib, Positive(j, path, "machine.memory_gib"));
  ASSIGN_OR_RETURN(r.bandwidth_gbs, Positive(j, path, "bandwidth_gbs"));
  ASSIGN_OR_RETURN(r.fp32_gflops, Positive(j, path, "fp32_peak_gflops"));
  ASSIGN_OR_RETURN(r.bf16_gflops, Positive(j, path, "bf16_peak_gflops"));
  ASSIGN_OR_RETURN(r.prefill_gflops, Positive(j, path, "prefill_gflops"));
  ASSIGN_OR_RETURN(r.prefill_tokens, Positive(j, path, "prefill_tokens"));
  ASSIGN_OR_RETURN(json shares, At(j, path, "decode_share_of_roofline", json::value_t::object));
  for (const auto& [batch, share] : shares.items()) {
    int64_t b = 0;
    if (!absl::SimpleAtoi(batch, &b) || b < 1 || !share.is_number() || !(share.get<double>() > 0)) {
      return KeyError(path, absl::StrCat("decode_share_of_roofline.", batch), "must be a positive share for a batch size >= 1");
    }
    r.decode_share[b] = share.get<double>();
  }
  if (r.decode_share.empty()) return KeyError(path, "decode_share_of_roofline", "is empty");
  return r;
}

struct ExchangeRun {
  std::string name, transport;
  int64_t world = 0, hosts = 0;
  double bandwidth_gbs = 0;   // ours, at the largest token count, dispatch and combine averaged
  double latency_us = 0;      // ours at the smallest token count, less its bytes at that bandwidth
  int64_t large_tokens = 0, small_tokens = 0;
  double small_us = 0, small_bytes = 0;
};

absl::StatusOr<ExchangeRun> ReadExchangeRun(const json& j, const std::string& path, const std::string& name) {
  ExchangeRun r;
  r.name = name;
  ASSIGN_OR_RETURN(json transport, At(j, path, "transport", json::value_t::string));
  ASSIGN_OR_RETURN(json world, At(j, path, "world_size", json::value_t::number_integer));
  ASSIGN_OR_RETURN(json hosts, At(j, path, "hosts", json::value_t::number_integer));
  ASSIGN_OR_RETURN(json results, At(j, path, "results", json::value_t::array));
  r.transport = transport.get<std::string>();
  r.world = world.get<int64_t>();
  r.hosts = hosts.get<int64_t>();
  if (r.world < 2) return KeyError(path, "world_size", "must be at least 2: an exchange needs two ranks");
  if (r.hosts < 1) return KeyError(path, "hosts", "must be at least 1");
  // tokens -> (sum of ours_us, sum of bytes, count) over the phases
  std::map<int64_t, std::array<double, 3>> by_tokens;
  for (size_t i = 0; i < results.size(); ++i) {
    const std::string row = absl::StrCat("results.", i, ".");
    ASSIGN_OR_RETURN(json tokens, At(j, path, row + "tokens", json::value_t::number_integer));
    ASSIGN_OR_RETURN(double us, Positive(j, path, row + "ours_us"));
    ASSIGN_OR_RETURN(double bytes, Positive(j, path, row + "bytes_per_rank"));
    auto& acc = by_tokens[tokens.get<int64_t>()];
    acc[0] += us;
    acc[1] += bytes;
    acc[2] += 1;
  }
  if (by_tokens.empty()) return KeyError(path, "results", "is empty");
  const auto& [large, l] = *by_tokens.rbegin();
  const auto& [small, s] = *by_tokens.begin();
  r.large_tokens = large;
  r.small_tokens = small;
  r.bandwidth_gbs = l[1] / l[0] / 1e3;  // bytes per microsecond / 1e3 = GB/s
  r.small_us = s[0] / s[2];
  r.small_bytes = s[1] / s[2];
  r.latency_us = std::max(0.0, r.small_us - r.small_bytes / (r.bandwidth_gbs * 1e3));
  return r;
}

std::string Num(double v) { return absl::StrFormat("%.4g", v); }

}  // namespace

absl::StatusOr<std::string> CalibrateHardware(const std::vector<CalibrationFile>& files) {
  std::vector<EngineRun> engine;
  std::vector<ExchangeRun> within, across;
  for (const CalibrationFile& f : files) {
    const std::string name = std::filesystem::path(f.path).filename().string();
    json j = json::parse(f.text, nullptr, false);
    if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(f.path, ": not JSON (expected `bench --json` or `bench-a2a --json` output)"));
    if (!j.is_object() || !j.contains("bench") || !j["bench"].is_string()) {
      return KeyError(f.path, "bench", "is missing: expected the output of `daedalus bench --json` or `daedalus bench-a2a --json`");
    }
    const std::string kind = j["bench"].get<std::string>();
    if (kind == "engine") {
      ASSIGN_OR_RETURN(EngineRun r, ReadEngineRun(j, f.path, name));
      if (!engine.empty() && (r.cpu != engine[0].cpu || r.isa != engine[0].isa)) {
        return absl::InvalidArgumentError(absl::StrCat(f.path, ": measured on ", r.cpu, " with kernel tier ", r.isa, ", but ",
                                                       engine[0].name, " on ", engine[0].cpu, " with ", engine[0].isa,
                                                       ": one hardware file describes one machine and tier"));
      }
      engine.push_back(std::move(r));
    } else if (kind == "a2a") {
      ASSIGN_OR_RETURN(ExchangeRun r, ReadExchangeRun(j, f.path, name));
      (r.hosts == 1 ? within : across).push_back(std::move(r));
    } else {
      return KeyError(f.path, "bench", absl::StrCat("is \"", kind, "\"; expected \"engine\" (bench) or \"a2a\" (bench-a2a)"));
    }
  }
  if (engine.empty()) return absl::InvalidArgumentError("--calibrate: no `daedalus bench --json` output among the files");
  if (within.empty()) {
    return absl::InvalidArgumentError(
        "--calibrate: no `daedalus bench-a2a --json` output measured within one host (for intra_node_gb_s); run "
        "`mpirun -np 2 daedalus bench-a2a --tokens 1,4096 --json` on one machine");
  }

  // The device is the fewest threads measured; runs with more threads measure the node with
  // every core busy (its devices share the memory bandwidth), kept apart.
  double device_threads = engine[0].threads, node_threads = engine[0].threads;
  for (const auto& r : engine) {
    device_threads = std::min(device_threads, r.threads);
    node_threads = std::max(node_threads, r.threads);
  }
  std::vector<EngineRun> node;
  for (const auto& r : engine)
    if (r.threads == node_threads && node_threads > device_threads) node.push_back(r);
  std::erase_if(engine, [&](const EngineRun& r) { return r.threads != device_threads; });
  std::vector<std::string> engine_names;
  for (const auto& r : engine) engine_names.push_back(r.name);
  auto median = [&](auto field) {
    std::vector<double> v;
    for (const auto& r : engine) v.push_back(field(r));
    return Median(v);
  };
  const EngineRun& first = engine[0];
  const std::string src = From(engine_names);
  std::string out;
  absl::StrAppend(&out, "# Calibrated by `daedalus plan --calibrate` from measurements on ", first.cpu, ", kernel tier ",
                  first.isa, ", ", Num(first.threads), " thread(s).\n");
  absl::StrAppend(&out, "name: ", json(absl::StrCat(first.cpu, " (", first.isa, ")")).dump(), "\n");
  absl::StrAppend(&out, "kind: cpu\n");
  absl::StrAppend(&out, "kernel_tier: ", first.isa, "  # bench machine.isa (", src, ")\n");
  absl::StrAppend(&out, "threads: ", Num(first.threads), "  # bench machine.threads\n");
  // The node's memory is its devices' to share, as its cores are: each device gets its part.
  const double devices = std::max(1.0, std::round(node_threads / device_threads));
  absl::StrAppend(&out, "memory_gib: ", Num(median([](const EngineRun& r) { return r.memory_gib; }) / devices),
                  "  # bench machine.memory_gib: physical memory, over ", Num(devices), " device(s) of ",
                  Num(device_threads), " thread(s) (", src, ")\n");
  absl::StrAppend(&out, "memory_bandwidth_gb_s: ", Num(median([](const EngineRun& r) { return r.bandwidth_gbs; })),
                  "  # bench bandwidth_gbs: DRAM read probe, best of its runs (", src, ")\n");
  absl::StrAppend(&out, "bf16_tflops: ", Num(median([](const EngineRun& r) { return r.bf16_gflops; }) / 1e3),
                  "  # bench bf16_peak_gflops / 1000: the tier's bf16 unit, all threads (", src, ")\n");
  absl::StrAppend(&out, "fp32_tflops: ", Num(median([](const EngineRun& r) { return r.fp32_gflops; }) / 1e3),
                  "  # bench fp32_peak_gflops / 1000: the tier's float FMA, all threads (", src, ")\n");
  absl::StrAppend(&out, "prefill_gflops: ", Num(median([](const EngineRun& r) { return r.prefill_gflops; })),
                  "  # bench prefill_gflops: the engine's prefill projections, ", Num(first.prefill_tokens),
                  "-token prompt (", src, ")\n");
  auto shares = [](const std::vector<EngineRun>& runs) {
    std::vector<std::string> out;
    for (const auto& [batch, _] : runs[0].decode_share) {
      std::vector<double> v;
      for (const auto& r : runs)
        if (r.decode_share.contains(batch)) v.push_back(r.decode_share.at(batch));
      out.push_back(absl::StrCat(batch, ": ", Num(Median(v))));
    }
    return absl::StrCat("{", absl::StrJoin(out, ", "), "}");
  };
  absl::StrAppend(&out, "decode_share_of_roofline: ", shares(engine),
                  "  # bench decode_share_of_roofline: decode tok/s over its roofline, by batch (", src, ")\n");
  if (!node.empty()) {
    std::vector<std::string> names;
    std::vector<double> bw;
    for (const auto& r : node) names.push_back(r.name), bw.push_back(r.bandwidth_gbs);
    const std::string node_src = From(names);
    absl::StrAppend(&out, "node_threads: ", Num(node_threads), "  # bench machine.threads with every core busy (", node_src,
                    ")\n");
    absl::StrAppend(&out, "node_memory_bandwidth_gb_s: ", Num(Median(bw)),
                    "  # bench bandwidth_gbs with every core busy: what the node's devices share (", node_src, ")\n");
    absl::StrAppend(&out, "node_decode_share_of_roofline: ", shares(node),
                    "  # bench decode_share_of_roofline with every core busy (", node_src, ")\n");
  }

  auto exchange = [&](const std::vector<ExchangeRun>& runs, const char* bandwidth_key, const char* latency_key,
                      const std::string& note) {
    std::vector<std::string> names;
    std::vector<double> bw, lat;
    for (const auto& r : runs) {
      names.push_back(absl::StrCat(r.name, ": ", r.transport, ", ", r.world, " ranks on ", r.hosts, " host(s)"));
      bw.push_back(r.bandwidth_gbs);
      lat.push_back(r.latency_us);
    }
    const ExchangeRun& r = runs[0];
    absl::StrAppend(&out, bandwidth_key, ": ", Num(Median(bw)), "  # ", note, "bench-a2a ours at ", r.large_tokens,
                    " tokens per rank, dispatch and combine: bytes sent over time (", From(names), ")\n");
    absl::StrAppend(&out, latency_key, ": ", Num(Median(lat)), "  # ", note, "bench-a2a ours at ", r.small_tokens, " tokens (",
                    Num(r.small_us), " us) less its ", Num(r.small_bytes), " bytes at that bandwidth, at least 0\n");
  };
  exchange(within, "intra_node_gb_s", "intra_node_latency_us", "");
  if (!across.empty()) {
    exchange(across, "nic_gb_s", "nic_latency_us", "");
  } else {
    exchange(within, "nic_gb_s", "nic_latency_us",
             "no bench-a2a run across hosts was given: the within-host figure stands in (a one-node cluster never uses it); ");
  }
  return out;
}

}  // namespace daedalus
