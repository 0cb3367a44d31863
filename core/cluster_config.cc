#include "core/cluster_config.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"

namespace daedalus {
namespace {

namespace fs = std::filesystem;

absl::Status KeyError(const std::string& source, const std::string& key, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": key \"", key, "\" ", what));
}

absl::StatusOr<YAML::Node> ParseText(std::string_view text, const std::string& source) {
  try {
    YAML::Node node = YAML::Load(std::string(text));
    if (!node.IsMap()) return absl::InvalidArgumentError(absl::StrCat(source, ": expected a YAML mapping at the top"));
    return node;
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid YAML: ", e.what()));
  }
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::error_code ec;  // a name the file system refuses (too long) is no such file, not an exception
  if (!fs::is_regular_file(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": cannot open (no such file)"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status CheckKeys(const YAML::Node& node, const std::string& source, const std::string& where,
                       const std::set<std::string>& allowed) {
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) return absl::InvalidArgumentError(absl::StrCat(source, ": a key of \"", where, "\" is not a plain name"));
    const std::string key = kv.first.Scalar();
    if (!allowed.count(key)) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": unknown key \"", where, key, "\"; expected one of: ",
                                                     absl::StrJoin(allowed, ", ")));
    }
  }
  return absl::OkStatus();
}

// Reads a scalar of type T; a missing required key or a value of the wrong type is an error.
template <typename T>
absl::Status Read(const YAML::Node& node, const std::string& source, const std::string& key, T& out, bool required) {
  const YAML::Node v = node[key];
  if (!v || v.IsNull()) {
    return required ? KeyError(source, key, "is missing") : absl::OkStatus();
  }
  if (!v.IsScalar()) return KeyError(source, key, "must be a single value");
  try {
    out = v.as<T>();
  } catch (const YAML::Exception&) {
    const char* kind = std::is_same_v<T, std::string> ? "a string" : std::is_integral_v<T> ? "an integer" : "a number";
    return KeyError(source, key, absl::StrCat("must be ", kind, ", found \"", v.Scalar(), "\""));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status ReadOptional(const YAML::Node& node, const std::string& source, const std::string& key,
                          std::optional<T>& out) {
  if (!node[key] || node[key].IsNull()) return absl::OkStatus();
  T value{};
  RETURN_IF_ERROR(Read(node, source, key, value, true));
  out = value;
  return absl::OkStatus();
}

// An optional map of decode batch (>= 1) to a positive share.
absl::Status ReadShares(const YAML::Node& node, const std::string& source, const char* key, std::map<int64_t, double>& out) {
  const YAML::Node shares = node[key];
  if (!shares || shares.IsNull()) return absl::OkStatus();
  if (!shares.IsMap()) return KeyError(source, key, "must map decode batch to a share");
  for (const auto& kv : shares) {
    try {
      const int64_t batch = kv.first.as<int64_t>();
      const double share = kv.second.as<double>();
      if (batch < 1 || !(share > 0)) throw YAML::Exception(YAML::Mark(), "range");
      out[batch] = share;
    } catch (const YAML::Exception&) {
      return KeyError(source, key, "must map batch sizes (>= 1) to positive shares");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<HardwareSpec> ParseHardware(const YAML::Node& node, const std::string& source) {
  RETURN_IF_ERROR(CheckKeys(node, source, "",
                            {"name", "kind", "memory_gib", "memory_gb", "memory_bandwidth_gb_s", "bf16_tflops", "fp8_tflops",
                             "intra_node_gb_s", "nic_gb_s", "nic_latency_us", "kernel_tier", "threads", "fp32_tflops",
                             "prefill_gflops", "decode_share_of_roofline", "intra_node_latency_us", "node_threads",
                             "node_memory_bandwidth_gb_s", "node_decode_share_of_roofline"}));
  HardwareSpec h;
  double bandwidth_gb_s = 0, bf16_tflops = 0, intra_gb_s = 0, nic_gb_s = 0, nic_latency_us = 0;
  std::optional<double> fp8_tflops, memory_gib, memory_gb;
  RETURN_IF_ERROR(Read(node, source, "name", h.name, true));
  RETURN_IF_ERROR(Read(node, source, "kind", h.kind, false));
  RETURN_IF_ERROR(ReadOptional(node, source, "memory_gib", memory_gib));
  RETURN_IF_ERROR(ReadOptional(node, source, "memory_gb", memory_gb));
  if (memory_gib.has_value() == memory_gb.has_value()) {
    return KeyError(source, "memory_gib", "or \"memory_gb\" must be given, one of them");
  }
  RETURN_IF_ERROR(Read(node, source, "memory_bandwidth_gb_s", bandwidth_gb_s, true));
  RETURN_IF_ERROR(Read(node, source, "bf16_tflops", bf16_tflops, true));
  RETURN_IF_ERROR(ReadOptional(node, source, "fp8_tflops", fp8_tflops));
  RETURN_IF_ERROR(Read(node, source, "intra_node_gb_s", intra_gb_s, true));
  RETURN_IF_ERROR(Read(node, source, "nic_gb_s", nic_gb_s, true));
  RETURN_IF_ERROR(Read(node, source, "nic_latency_us", nic_latency_us, true));
  if (h.kind != "gpu" && h.kind != "cpu") return KeyError(source, "kind", absl::StrCat("is \"", h.kind, "\"; expected gpu or cpu"));
  auto positive = [&](const char* key, double v) {
    return v > 0 ? absl::OkStatus() : KeyError(source, key, absl::StrCat("must be positive, found ", v));
  };
  RETURN_IF_ERROR(memory_gib ? positive("memory_gib", *memory_gib) : positive("memory_gb", *memory_gb));
  RETURN_IF_ERROR(positive("memory_bandwidth_gb_s", bandwidth_gb_s));
  RETURN_IF_ERROR(positive("bf16_tflops", bf16_tflops));
  if (fp8_tflops) RETURN_IF_ERROR(positive("fp8_tflops", *fp8_tflops));
  RETURN_IF_ERROR(positive("intra_node_gb_s", intra_gb_s));
  RETURN_IF_ERROR(positive("nic_gb_s", nic_gb_s));
  if (nic_latency_us < 0) return KeyError(source, "nic_latency_us", "must not be negative");
  h.memory_bytes = memory_gib ? *memory_gib * 1024.0 * 1024.0 * 1024.0 : *memory_gb * 1e9;
  h.memory_bandwidth = bandwidth_gb_s * 1e9;
  h.bf16_flops = bf16_tflops * 1e12;
  h.fp8_flops = (fp8_tflops ? *fp8_tflops : bf16_tflops) * 1e12;
  h.intra_node_bandwidth = intra_gb_s * 1e9;
  h.nic_bandwidth = nic_gb_s * 1e9;
  h.nic_latency_s = nic_latency_us * 1e-6;
  // Measured figures.
  double fp32_tflops = 0, prefill_gflops = 0, intra_latency_us = 0;
  RETURN_IF_ERROR(Read(node, source, "kernel_tier", h.kernel_tier, false));
  RETURN_IF_ERROR(Read(node, source, "threads", h.threads, false));
  RETURN_IF_ERROR(Read(node, source, "fp32_tflops", fp32_tflops, false));
  RETURN_IF_ERROR(Read(node, source, "prefill_gflops", prefill_gflops, false));
  RETURN_IF_ERROR(Read(node, source, "intra_node_latency_us", intra_latency_us, false));
  if (fp32_tflops < 0 || prefill_gflops < 0 || intra_latency_us < 0 || h.threads < 0) {
    return KeyError(source, fp32_tflops < 0 ? "fp32_tflops" : prefill_gflops < 0 ? "prefill_gflops"
                            : intra_latency_us < 0 ? "intra_node_latency_us" : "threads", "must not be negative");
  }
  h.fp32_flops = fp32_tflops * 1e12;
  h.prefill_flops_achieved = prefill_gflops * 1e9;
  h.intra_node_latency_s = intra_latency_us * 1e-6;
  RETURN_IF_ERROR(ReadShares(node, source, "decode_share_of_roofline", h.decode_share_of_roofline));
  double node_gb_s = 0;
  RETURN_IF_ERROR(Read(node, source, "node_threads", h.node_threads, false));
  RETURN_IF_ERROR(Read(node, source, "node_memory_bandwidth_gb_s", node_gb_s, false));
  if (h.node_threads < 0 || node_gb_s < 0) {
    return KeyError(source, h.node_threads < 0 ? "node_threads" : "node_memory_bandwidth_gb_s", "must not be negative");
  }
  h.node_memory_bandwidth = node_gb_s * 1e9;
  RETURN_IF_ERROR(ReadShares(node, source, "node_decode_share_of_roofline", h.node_decode_share_of_roofline));
  return h;
}

absl::Status ParseDeployment(const YAML::Node& node, const std::string& source, DeploymentDefaults& d) {
  if (!node.IsMap()) return KeyError(source, "deployment", "must be a mapping");
  RETURN_IF_ERROR(CheckKeys(node, source, "deployment.",
                            {"phase", "nodes", "ep", "redundant_experts", "batch_per_gpu", "avg_context", "prompt_len",
                             "micro_batches", "weight_dtype", "kv_dtype", "cache_hit_rate", "synthetic_skew",
                             "prefill_nodes", "decode_nodes", "output_len", "prefill_batch_per_gpu"}));
  const std::string where = absl::StrCat(source, " (deployment)");
  RETURN_IF_ERROR(ReadOptional(node, where, "phase", d.phase));
  RETURN_IF_ERROR(ReadOptional(node, where, "nodes", d.nodes));
  RETURN_IF_ERROR(ReadOptional(node, where, "ep", d.ep));
  RETURN_IF_ERROR(ReadOptional(node, where, "redundant_experts", d.redundant_experts));
  RETURN_IF_ERROR(ReadOptional(node, where, "batch_per_gpu", d.batch_per_gpu));
  RETURN_IF_ERROR(ReadOptional(node, where, "avg_context", d.avg_context));
  RETURN_IF_ERROR(ReadOptional(node, where, "prompt_len", d.prompt_len));
  RETURN_IF_ERROR(ReadOptional(node, where, "micro_batches", d.micro_batches));
  RETURN_IF_ERROR(ReadOptional(node, where, "weight_dtype", d.weight_dtype));
  RETURN_IF_ERROR(ReadOptional(node, where, "kv_dtype", d.kv_dtype));
  RETURN_IF_ERROR(ReadOptional(node, where, "cache_hit_rate", d.cache_hit_rate));
  RETURN_IF_ERROR(ReadOptional(node, where, "synthetic_skew", d.synthetic_skew));
  RETURN_IF_ERROR(ReadOptional(node, where, "prefill_nodes", d.prefill_nodes));
  RETURN_IF_ERROR(ReadOptional(node, where, "decode_nodes", d.decode_nodes));
  RETURN_IF_ERROR(ReadOptional(node, where, "output_len", d.output_len));
  RETURN_IF_ERROR(ReadOptional(node, where, "prefill_batch_per_gpu", d.prefill_batch_per_gpu));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HardwareSpec> LoadHardwareSpec(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadText(path));
  return ParseHardwareSpec(text, path);
}

absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadText(path));
  return ParseClusterConfig(text, path);
}

absl::StatusOr<HardwareSpec> ParseHardwareSpec(std::string_view yaml, const std::string& path) {
  ASSIGN_OR_RETURN(YAML::Node node, ParseText(yaml, path));
  return ParseHardware(node, path);
}

absl::StatusOr<ClusterConfig> ParseClusterConfig(std::string_view yaml, const std::string& path) {
  ASSIGN_OR_RETURN(YAML::Node node, ParseText(yaml, path));
  RETURN_IF_ERROR(CheckKeys(node, path, "", {"name", "nodes", "devices_per_node", "hardware", "deployment", "published"}));
  ClusterConfig c;
  c.source = path;
  RETURN_IF_ERROR(Read(node, path, "name", c.name, true));
  RETURN_IF_ERROR(Read(node, path, "nodes", c.nodes, true));
  RETURN_IF_ERROR(Read(node, path, "devices_per_node", c.devices_per_node, true));
  if (c.nodes < 1) return KeyError(path, "nodes", absl::StrCat("must be >= 1, found ", c.nodes));
  if (c.devices_per_node < 1) {
    return KeyError(path, "devices_per_node", absl::StrCat("must be >= 1, found ", c.devices_per_node));
  }
  const YAML::Node hw = node["hardware"];
  if (!hw || hw.IsNull()) return KeyError(path, "hardware", "is missing");
  if (hw.IsMap()) {
    ASSIGN_OR_RETURN(c.hardware, ParseHardware(hw, absl::StrCat(path, " (hardware)")));
  } else if (hw.IsScalar()) {
    // A preset name resolves next to the clusters folder; anything ending in .yaml is a path
    // relative to this file.
    const std::string ref = hw.Scalar();
    const fs::path dir = fs::path(path).parent_path();
    const bool is_path = ref.size() > 5 && ref.substr(ref.size() - 5) == ".yaml";
    const fs::path file = is_path ? dir / ref : dir / ".." / "hardware" / (ref + ".yaml");
    std::error_code ec;  // a name the file system refuses (too long) is unknown hardware, not an exception
    if (!fs::is_regular_file(file, ec)) {
      return KeyError(path, "hardware", absl::StrCat("names unknown hardware \"", ref, "\": no file ", file.lexically_normal().string()));
    }
    ASSIGN_OR_RETURN(c.hardware, LoadHardwareSpec(file.lexically_normal().string()));
  } else {
    return KeyError(path, "hardware", "must be a preset name or a mapping");
  }
  if (node["deployment"] && !node["deployment"].IsNull()) RETURN_IF_ERROR(ParseDeployment(node["deployment"], path, c.deployment));
  if (const YAML::Node p = node["published"]; p && !p.IsNull()) {
    if (!p.IsMap()) return KeyError(path, "published", "must be a mapping");
    RETURN_IF_ERROR(CheckKeys(p, path, "published.", {"metric", "value", "source"}));
    PublishedFigure f;
    const std::string where = absl::StrCat(path, " (published)");
    RETURN_IF_ERROR(Read(p, where, "metric", f.metric, true));
    RETURN_IF_ERROR(Read(p, where, "value", f.value, true));
    RETURN_IF_ERROR(Read(p, where, "source", f.source, true));
    c.published = f;
  }
  return c;
}

}  // namespace daedalus
