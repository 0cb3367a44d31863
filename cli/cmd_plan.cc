// `daedalus plan`: capacity planning of an expert-parallel deployment (planner/). Settings
// come from, in rising precedence: the planner's defaults, the model (its weight dtype), the
// cluster preset's `deployment:` block, the flags, then each --sweep combination.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/request_io.h"
#include "core/cluster_config.h"
#include "core/model_config.h"
#include "planner/calibrate.h"
#include "planner/disaggregated.h"
#include "planner/plan.h"
#include "planner/serving.h"
#include "planner/report.h"
#include "planner/svg_plot.h"
#include "planner/sweep.h"
#include "routing/expert_load.h"

namespace daedalus {
namespace {

struct PlanFlags {
  std::string model, cluster, phase, weight_dtype, kv_dtype, expert_load, format = "table", plot;
  int64_t nodes = 0, ep = 0, redundant = 0, batch = 0, avg_context = 0, prompt_len = 0, micro_batches = 2;
  int64_t prefill_nodes = 0, decode_nodes = 0, output_len = 0, prefill_batch = 0;
  double cache_hit_rate = 0, synthetic_skew = 0, mtp_acceptance = 0, overlap = Efficiency{}.overlap;
  std::vector<std::string> sweeps;
  std::map<std::string, CLI::Option*> given;  // setting name → its flag
  std::vector<std::string> calibrate;         // bench / bench-a2a --json outputs
  std::string out;
  std::string serve_concurrency;              // "1,16,64": closed-loop serving predictions
  int64_t max_new_tokens = 64, max_batch_tokens = 512, prefill_chunk = 512;
};

// plan --calibrate FILE... --out HARDWARE.yaml
int RunCalibrate(const PlanFlags& f) {
  if (f.out.empty()) return Fail("--calibrate needs --out HARDWARE.yaml");
  std::vector<CalibrationFile> files;
  for (const std::string& path : f.calibrate) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return Fail(absl::StrCat(path, ": cannot open"));
    std::stringstream text;
    text << in.rdbuf();
    files.push_back({path, text.str()});
  }
  auto yaml = CalibrateHardware(files);
  if (!yaml.ok()) return Fail(std::string(yaml.status().message()));
  // What was written must load as a hardware file.
  if (auto parsed = ParseHardwareSpec(*yaml, f.out); !parsed.ok()) return Fail(std::string(parsed.status().message()));
  std::ofstream out(f.out);
  out << *yaml;
  if (!out) return Fail(absl::StrCat(f.out, ": cannot write"));
  std::printf("%s", yaml->c_str());
  return 0;
}

std::string ConfigPath(const std::string& model) {
  std::error_code ec;  // a name the file system refuses is not a folder; loading it says why
  return std::filesystem::is_directory(model, ec) ? (std::filesystem::path(model) / "config.json").string() : model;
}

std::string ModelName(const std::string& model) {
  std::filesystem::path p(model);
  std::error_code ec;
  if (!std::filesystem::is_directory(p, ec)) p = p.parent_path();
  const std::string name = p.lexically_normal().filename().string();
  return name.empty() ? p.lexically_normal().parent_path().filename().string() : name;
}

// The flags the user gave, as settings.
std::vector<Setting> FlagSettings(const PlanFlags& f) {
  std::vector<Setting> s;
  auto add = [&](const char* name, const std::string& value) {
    if (f.given.at(name)->count() > 0) s.emplace_back(name, value);
  };
  add("phase", f.phase);
  add("nodes", absl::StrCat(f.nodes));
  add("ep", absl::StrCat(f.ep));
  add("redundant-experts", absl::StrCat(f.redundant));
  add("batch-per-gpu", absl::StrCat(f.batch));
  add("avg-context", absl::StrCat(f.avg_context));
  add("prompt-len", absl::StrCat(f.prompt_len));
  add("micro-batches", absl::StrCat(f.micro_batches));
  add("weight-dtype", f.weight_dtype);
  add("kv-dtype", f.kv_dtype);
  add("cache-hit-rate", absl::StrCat(f.cache_hit_rate));
  add("synthetic-skew", absl::StrCat(f.synthetic_skew));
  add("mtp-acceptance", absl::StrCat(f.mtp_acceptance));
  add("prefill-nodes", absl::StrCat(f.prefill_nodes));
  add("decode-nodes", absl::StrCat(f.decode_nodes));
  add("output-len", absl::StrCat(f.output_len));
  add("prefill-batch-per-gpu", absl::StrCat(f.prefill_batch));
  return s;
}

// plan --serve-concurrency 1,16,64: closed-loop serving on a calibrated cluster.
int RunServing(const PlanFlags& f, const ModelConfig& config, const ClusterConfig& cluster, const Workload& base,
               const std::string& model_name) {
  auto levels = ParseIdList(f.serve_concurrency);
  if (!levels.ok() || levels->empty()) return Fail("--serve-concurrency: expected comma-separated client counts");
  const int64_t prompt = f.given.at("prompt-len")->count() > 0 ? f.prompt_len : 128;
  if (f.format == "table") {
    std::printf("%s on %s (%s, kernel tier %s): closed-loop clients, prompt %lld tokens, %lld new tokens\n",
                model_name.c_str(), cluster.name.c_str(), cluster.hardware.name.c_str(),
                cluster.hardware.kernel_tier.empty() ? "-" : cluster.hardware.kernel_tier.c_str(),
                static_cast<long long>(prompt), static_cast<long long>(f.max_new_tokens));
    std::printf("%11s %8s %9s %12s %11s %12s %9s %9s\n", "concurrency", "workers", "seqs/wkr", "decode step", "prefill",
                "output tok/s", "ttft", "itl");
  }
  for (int32_t c : *levels) {
    auto p = PredictServing(config, cluster, base, ServingLoad{c, prompt, f.max_new_tokens, f.max_batch_tokens, f.prefill_chunk});
    if (!p.ok()) return Fail(std::string(p.status().message()));
    if (f.format == "json") {
      nlohmann::ordered_json j = {{"concurrency", c}, {"workers", p->workers}, {"busy_workers", p->busy_workers},
                                  {"sequences_per_worker", p->batch_per_worker}, {"decode_step_ms", p->decode_step_s * 1e3},
                                  {"prefill_ms", p->prefill_s * 1e3}, {"output_tokens_per_s", p->output_tokens_per_s},
                                  {"ttft_ms", p->ttft_s * 1e3}, {"itl_ms", p->itl_s * 1e3}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%11d %8lld %9lld %10.2fms %9.1fms %12.1f %7.1fms %7.2fms\n", c, static_cast<long long>(p->busy_workers),
                  static_cast<long long>(p->batch_per_worker), p->decode_step_s * 1e3, p->prefill_s * 1e3,
                  p->output_tokens_per_s, p->ttft_s * 1e3, p->itl_s * 1e3);
    }
  }
  return 0;
}

// --phase pd: a prefill and a decode deployment and the requests they serve together.
int RunDisaggregated(const PlanFlags& f, const ModelConfig& config, const ClusterConfig& cluster, const Workload& base,
                     const std::vector<SweepAxis>& axes, const ExpertLoad& histogram, const Efficiency& efficiency,
                     const std::string& model_name) {
  if (f.format == "csv") return Fail("--phase pd: --format csv is not supported (use --format json)");
  std::vector<std::pair<std::vector<Setting>, absl::StatusOr<PdPlan>>> results;
  for (const std::vector<Setting>& combination : ExpandSweep(axes)) {
    const absl::StatusOr<Workload> w = ApplySettings(combination, base);
    results.emplace_back(combination, w.ok() ? MakePdPlan(config, cluster, *w, efficiency, histogram)
                                             : absl::StatusOr<PdPlan>(w.status()));
  }
  if (std::none_of(results.begin(), results.end(), [](const auto& r) { return r.second.ok(); })) {
    return Fail(std::string(results.front().second.status().message()));
  }
  for (const auto& [settings, plan] : results) {
    if (f.format == "json") {
      std::printf("%s\n", (plan.ok() ? PdPlanJson(model_name, *plan) : ErrorJson(settings, plan.status())).dump().c_str());
    }
  }
  if (f.format == "table") {
    std::printf("%s", axes.empty() ? PdPlanReport(model_name, *results.front().second).c_str() : PdSweepTable(results).c_str());
  }
  if (!f.plot.empty()) {  // each split's output per node of the pair against its decode side's ITL
    std::vector<PlotPoint> points;
    for (const auto& [settings, plan] : results) {
      if (!plan.ok()) continue;
      std::string label;
      for (const auto& [k, v] : settings) label += absl::StrCat(label.empty() ? "" : " ", k, "=", v);
      const double nodes = static_cast<double>(plan->workload.prefill_nodes + plan->workload.decode_nodes);
      points.push_back({plan->itl_s() * 1e3, plan->output_tokens_per_s() / nodes,
                        label.empty() ? absl::StrCat(plan->workload.prefill_nodes, " + ", plan->workload.decode_nodes, " nodes") : label});
    }
    std::ofstream out(f.plot);
    out << FrontierSvg(points, absl::StrCat(model_name, " on ", cluster.name, ": disaggregated, throughput vs latency"),
                       "inter-token latency (ms)", "output tokens/s per node (prefill and decode nodes)");
    if (!out) return Fail(absl::StrCat(f.plot, ": cannot write"));
  }
  return 0;
}

int RunPlan(const PlanFlags& f) {
  if (f.format != "table" && f.format != "json" && f.format != "csv") {
    return Fail(absl::StrCat("--format ", f.format, ": expected table, json or csv"));
  }
  auto config = ModelConfig::Load(ConfigPath(f.model));
  if (!config.ok()) return Fail(std::string(config.status().message()));
  auto cluster = LoadClusterConfig(f.cluster);
  if (!cluster.ok()) return Fail(std::string(cluster.status().message()));
  ExpertLoad histogram;
  if (!f.expert_load.empty()) {
    auto read = ReadExpertLoad(f.expert_load, config->num_hidden_layers, config->n_routed_experts);
    if (!read.ok()) return Fail(std::string(read.status().message()));
    histogram = *std::move(read);
  }
  std::vector<SweepAxis> axes;
  for (const std::string& spec : f.sweeps) {
    auto axis = ParseSweepAxis(spec);
    if (!axis.ok()) return Fail(std::string(axis.status().message()));
    axes.push_back(*std::move(axis));
  }

  Workload base;
  base.weight_dtype = config->fp8 ? DType::kF8E4M3 : DType::kBF16;
  for (const Setting& s : DeploymentSettings(cluster->deployment)) {
    if (absl::Status st = ApplySetting(s, base); !st.ok()) {
      return Fail(absl::StrCat(f.cluster, " (deployment): ", st.message()));
    }
  }
  for (const Setting& s : FlagSettings(f)) {
    if (absl::Status st = ApplySetting(s, base); !st.ok()) return Fail(absl::StrCat("--", st.message()));
  }

  const std::string model_name = ModelName(f.model);
  if (!f.serve_concurrency.empty()) return RunServing(f, *config, *cluster, base, model_name);
  Efficiency efficiency;
  efficiency.overlap = f.overlap;
  if (base.phase == Phase::kPd) return RunDisaggregated(f, *config, *cluster, base, axes, histogram, efficiency, model_name);
  std::vector<PlanResult> results;
  for (const std::vector<Setting>& combination : ExpandSweep(axes)) {
    const absl::StatusOr<Workload> w = ApplySettings(combination, base);
    results.push_back({combination, w.ok() ? MakePlan(*config, *cluster, *w, efficiency, histogram)
                                           : absl::StatusOr<Plan>(w.status())});
  }
  int ok = 0;
  for (const PlanResult& r : results) ok += r.plan.ok() ? 1 : 0;
  if (ok == 0) return Fail(std::string(results.front().plan.status().message()));

  const bool sweep = !axes.empty();
  if (f.format == "json") {
    for (const PlanResult& r : results) {
      const std::string line = r.plan.ok() ? PlanJson(model_name, *r.plan, cluster->published).dump()
                                           : ErrorJson(r.settings, r.plan.status()).dump();
      std::printf("%s\n", line.c_str());
    }
  } else if (f.format == "csv") {
    std::printf("%s", CsvHeader(results.front().settings).c_str());
    for (const PlanResult& r : results) std::printf("%s", CsvRow(model_name, r).c_str());
  } else if (sweep) {
    std::printf("%s", SweepTable(results).c_str());
  } else {
    std::printf("%s", PlanReport(model_name, *results.front().plan, efficiency, cluster->published).c_str());
  }

  if (!f.plot.empty()) {
    std::vector<PlotPoint> points;
    bool any_decode = false;
    for (const PlanResult& r : results) {
      if (!r.plan.ok()) continue;
      const Plan& p = *r.plan;
      const bool decode = p.workload.phase == Phase::kDecode;
      any_decode |= decode;
      std::string label;
      for (const auto& [k, v] : r.settings) label += absl::StrCat(label.empty() ? "" : " ", k, "=", v);
      points.push_back({(decode ? p.itl_s : p.ttft_s) * 1e3,
                        decode ? p.output_tokens_per_s_per_node() : p.input_tokens_per_s_per_node(),
                        label.empty() ? cluster->name : label});
    }
    const std::string svg = FrontierSvg(
        points, absl::StrCat(model_name, " on ", cluster->name, ": throughput vs latency"),
        any_decode ? "inter-token latency (ms)" : "time to first token (ms)",
        any_decode ? "output tokens/s per node" : "input tokens/s per node");
    std::ofstream out(f.plot);
    out << svg;
    if (!out) return Fail(absl::StrCat(f.plot, ": cannot write"));
  }
  // A sweep reports its failed points inline and succeeds when any point does.
  return 0;
}

}  // namespace

Command AddPlanCommand(CLI::App& app) {
  auto f = std::make_shared<PlanFlags>();
  app.add_option("--model", f->model, "model directory holding config.json (or the config.json itself)");
  app.add_option("--cluster", f->cluster, "cluster YAML (cluster-configs/clusters/)");
  app.add_option("--calibrate", f->calibrate,
                 "instead of planning: write a hardware file (--out) from `bench --json` and `bench-a2a --json` outputs "
                 "of this machine, a source comment on every number")
      ->expected(1, -1);
  app.add_option("--out", f->out, "with --calibrate: the hardware YAML to write");
  app.add_option("--serve-concurrency", f->serve_concurrency,
                 "instead of one step: closed-loop serving at these client counts (e.g. 1,16,64) on a cluster with "
                 "calibrated hardware, as loadgen measures it: output tokens/s, TTFT, ITL");
  app.add_option("--max-new-tokens", f->max_new_tokens, "with --serve-concurrency: tokens generated per request");
  app.add_option("--max-batch-tokens", f->max_batch_tokens, "with --serve-concurrency: the workers' tokens per step");
  app.add_option("--prefill-chunk", f->prefill_chunk, "with --serve-concurrency: the workers' longest prompt slice per step");
  f->given["phase"] = app.add_option("--phase", f->phase,
                                     "prefill, decode, or pd: disaggregated prefill and decode nodes (--prefill-nodes, "
                                     "--decode-nodes, --output-len)");
  f->given["prefill-nodes"] = app.add_option("--prefill-nodes", f->prefill_nodes, "pd: nodes computing prompts (one EP group)");
  f->given["decode-nodes"] =
      app.add_option("--decode-nodes", f->decode_nodes, "pd: nodes generating tokens (the next ones; one EP group)");
  f->given["output-len"] = app.add_option("--output-len", f->output_len, "pd: tokens generated per request");
  f->given["prefill-batch-per-gpu"] = app.add_option("--prefill-batch-per-gpu", f->prefill_batch,
                                                     "pd: prompts per prefill device per step (default 4; --batch-per-gpu "
                                                     "is the decode side's sequences)");
  f->given["nodes"] = app.add_option("--nodes", f->nodes, "use this many of the cluster's nodes (default: all)");
  f->given["ep"] = app.add_option("--ep", f->ep, "expert-parallel degree (default: every device used)");
  f->given["redundant-experts"] =
      app.add_option("--redundant-experts", f->redundant, "extra replicas of hot experts per EP unit");
  f->given["batch-per-gpu"] =
      app.add_option("--batch-per-gpu", f->batch, "decode: sequences per device; prefill: prompts per device per step");
  f->given["avg-context"] = app.add_option("--avg-context", f->avg_context, "decode: mean KV length per sequence");
  f->given["prompt-len"] =
      app.add_option("--prompt-len", f->prompt_len, "prefill: tokens per prompt (default: --avg-context)");
  f->given["micro-batches"] =
      app.add_option("--micro-batches", f->micro_batches, "2 overlaps all-to-all with computation, 1 does not");
  f->given["weight-dtype"] = app.add_option("--weight-dtype", f->weight_dtype, "bf16 or fp8 (default: the model's)");
  f->given["kv-dtype"] = app.add_option("--kv-dtype", f->kv_dtype, "bf16 or fp8 (default bf16)");
  f->given["cache-hit-rate"] =
      app.add_option("--cache-hit-rate", f->cache_hit_rate, "prefill: fraction of prompt tokens already cached");
  f->given["mtp-acceptance"] = app.add_option(
      "--mtp-acceptance", f->mtp_acceptance,
      "decode with multi-token prediction: the draft token's acceptance rate A in [0, 1] (a step yields 1 + A tokens "
      "per sequence, feeds the main model two, and runs one more MoE layer)");
  f->given["synthetic-skew"] = app.add_option(
      "--synthetic-skew", f->synthetic_skew, "expert popularity ~ 1/rank^skew when no --expert-load (default 0: even)");
  app.add_option("--overlap", f->overlap,
                 "fraction of the shorter of computation and communication hidden under the longer with two "
                 "micro-batches (default 0.5, from SGLang's two-batch-overlap ablation; planner/README.md)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--expert-load", f->expert_load, "expert-load histogram from `run --expert-load-out`");
  app.add_option("--format", f->format, "table, json (one object per plan per line) or csv");
  app.add_option("--sweep", f->sweeps, "NAME=V1,V2,... (repeatable: every combination), e.g. ep=8,16,32");
  app.add_option("--plot", f->plot, "write an SVG of throughput against latency with its frontier");
  return [f]() {
    if (!f->calibrate.empty()) return RunCalibrate(*f);
    if (f->model.empty() || f->cluster.empty()) return Fail("--model and --cluster are required (or --calibrate FILE...)");
    return RunPlan(*f);
  };
}

}  // namespace daedalus
