// Speed of the calibrated methods (issue 15 item 5, issue 16 item 4), in one
// process, on one contract model (scripts/bench.sh passes the
// flan-t5-small-shaped one), through the library API:
//
//   calibration   calibration_stats_for_run: every Linear layer, the first
//                 --tokens tokens of --calibration in windows of the model's
//                 max_length (512 for T5), batches of 1 window (the CLI's default)
//   gptq          gptq_quantize of every Linear layer, natural column order
//   gptq_actorder the same with act_order (static groups)
//   awq           awq_search of every group of layers that read one tensor
//                 (shared_input of the statistics; a layer alone is a group of one)
//
// Each phase is timed with a monotonic clock around the library calls only
// (the model is loaded and the statistics are in memory before GPTQ and AWQ
// start). The targets (scripts/bench_report.py): calibration + GPTQ < 180 s and
// GPTQ faster than the Python reference (bench/gptq_reference_bench.py) on the
// same Hessians, which --stats-out writes (the file format of `quantppl
// calibrate --output`); AWQ's search < 30 s.
//
// usage: quantppl_method_bench --model M --calibration TEXT [--tokens N]
//          [--threads T] [--spec SPEC] [--stats-out FILE] [--skip-actorder]
//          [--skip-awq] [--max-layers N]   (the first N layers only: for profiling)
// Prints one JSON object on stdout (fields below, per-layer e of GPTQ included
// so that the reference's e can be checked against them); cpu_seconds holds
// each phase's process CPU time (all threads), for runs on a busy machine.
#include <torch/torch.h>

#include <chrono>
#include <ctime>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quantppl/contract_model.h"
#include "quantppl/error.h"
#include "quantppl/formats/format_table.h"
#include "quantppl/methods/awq.h"
#include "quantppl/methods/calibration.h"
#include "quantppl/methods/calibration_file.h"
#include "quantppl/methods/gptq.h"
#include "quantppl/runtime.h"
#include "../src/openmp_wait_policy.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// CPU seconds of the whole process (every thread): on a shared machine the
// wall time grows with the other work, the CPU time much less.
double cpu_seconds() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

struct Args {
  std::string model;
  std::string calibration;
  int64_t tokens = quantppl::kDefaultCalibrationTokens;
  int threads = 2;
  std::string spec = "absmax:4:group128";
  std::string stats_out;
  bool actorder = true;
  bool awq = true;
  int64_t max_layers = 0;  // 0: every Linear layer
};

[[noreturn]] void usage_error(const std::string& message) {
  throw quantppl::UsageError("quantppl_method_bench: " + message +
                             " (usage: --model M --calibration TEXT [--tokens N] [--threads T] [--spec SPEC] "
                             "[--stats-out FILE] [--skip-actorder] [--skip-awq] [--max-layers N])");
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--model") {
      a.model = value();
    } else if (flag == "--calibration") {
      a.calibration = value();
    } else if (flag == "--tokens") {
      a.tokens = std::stoll(value());
    } else if (flag == "--threads") {
      a.threads = std::stoi(value());
    } else if (flag == "--spec") {
      a.spec = value();
    } else if (flag == "--stats-out") {
      a.stats_out = value();
    } else if (flag == "--skip-actorder") {
      a.actorder = false;
    } else if (flag == "--skip-awq") {
      a.awq = false;
    } else if (flag == "--max-layers") {
      a.max_layers = std::stoll(value());
    } else {
      usage_error("unknown argument '" + flag + "'");
    }
  }
  if (a.model.empty() || a.calibration.empty()) usage_error("--model and --calibration are required");
  if (a.threads < 1) usage_error("--threads must be >= 1");
  return a;
}

// GPTQ of every layer; per-layer e and seconds in `errors` and `seconds`.
double time_gptq(const std::vector<quantppl::LinearLayer>& layers, const quantppl::CalibrationStats& stats,
                 const quantppl::WeightFormat& format, bool act_order, std::vector<double>& errors,
                 std::vector<double>& seconds) {
  quantppl::GptqOptions options;
  options.act_order = act_order;
  errors.clear();
  seconds.clear();
  const auto t0 = Clock::now();
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto t1 = Clock::now();
    const quantppl::GptqResult r =
        quantppl::gptq_quantize(layers[i].weight, stats.layers[i].hessian, format, layers[i].name, options);
    seconds.push_back(seconds_since(t1));
    errors.push_back(r.relative_error);
  }
  return seconds_since(t0);
}

int run(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  const quantppl::RuntimeSettings runtime = quantppl::configure_runtime(args.threads);
  torch::NoGradGuard no_grad;
  const std::shared_ptr<const quantppl::WeightFormat> format = quantppl::parse_format(args.spec);

  quantppl::ContractModel model = quantppl::ContractModel::load(args.model);
  std::vector<quantppl::LinearLayer> layers = model.linear_layers();
  if (args.max_layers > 0 && static_cast<size_t>(args.max_layers) < layers.size()) {
    layers.resize(static_cast<size_t>(args.max_layers));
  }
  int64_t parameters = 0;
  for (const auto& l : layers) parameters += l.weight.numel();

  quantppl::CalibrationRequest request;
  request.text_path = args.calibration;
  request.tokens = args.tokens;
  auto t0 = Clock::now();
  double c0 = cpu_seconds();
  const quantppl::CalibrationStats stats = quantppl::calibration_stats_for_run(model, layers, request);
  const double calibration_seconds = seconds_since(t0);
  const double calibration_cpu = cpu_seconds() - c0;
  if (!args.stats_out.empty()) {
    quantppl::write_calibration_stats(args.stats_out, stats, /*force=*/true, {args.model, args.calibration});
  }

  std::vector<double> natural_errors, natural_seconds;
  std::vector<double> actorder_errors, actorder_seconds_per_layer;
  c0 = cpu_seconds();
  const double gptq_seconds = time_gptq(layers, stats, *format, false, natural_errors, natural_seconds);
  const double gptq_cpu = cpu_seconds() - c0;
  c0 = cpu_seconds();
  const double actorder_seconds =
      args.actorder ? time_gptq(layers, stats, *format, true, actorder_errors, actorder_seconds_per_layer) : -1.0;
  const double actorder_cpu = cpu_seconds() - c0;

  // AWQ: one search per shared_input group, in order of first appearance.
  std::vector<std::vector<size_t>> groups;
  std::map<int64_t, size_t> group_of;
  for (size_t i = 0; i < layers.size(); ++i) {
    const int64_t id = stats.layers[i].shared_input;
    const auto [it, inserted] = group_of.emplace(id, groups.size());
    if (id < 0 || inserted) groups.emplace_back();
    groups[id < 0 ? groups.size() - 1 : it->second].push_back(i);
  }
  std::vector<double> alphas, awq_group_seconds;
  t0 = Clock::now();
  c0 = cpu_seconds();
  for (const std::vector<size_t>& group : groups) {
    if (!args.awq) break;
    std::vector<quantppl::AwqLayer> awq_layers;
    for (const size_t i : group) awq_layers.push_back({layers[i].name, layers[i].weight, &stats.layers[i]});
    const auto t1 = Clock::now();
    alphas.push_back(quantppl::awq_search(awq_layers, *format).alpha);
    awq_group_seconds.push_back(seconds_since(t1));
  }
  const double awq_seconds = seconds_since(t0);
  const double awq_cpu = cpu_seconds() - c0;

  nlohmann::json names = nlohmann::json::array();
  for (const auto& l : layers) names.push_back(l.name);
  nlohmann::json out = {
      {"model", args.model},
      {"calibration_text", args.calibration},
      {"spec", args.spec},
      {"threads", runtime.threads},
      {"layers", layers.size()},
      {"linear_parameters", parameters},
      {"calibration_tokens", stats.tokens},
      {"calibration_seconds", calibration_seconds},
      {"gptq_seconds", gptq_seconds},
      {"gptq_actorder_seconds", actorder_seconds},
      {"gptq_total_seconds", calibration_seconds + gptq_seconds},
      {"gptq_actorder_total_seconds", args.actorder ? calibration_seconds + actorder_seconds : -1.0},
      {"awq_groups", groups.size()},
      {"awq_seconds", awq_seconds},
      {"awq_alphas", alphas},
      {"awq_group_seconds", awq_group_seconds},
      {"cpu_seconds", {{"calibration", calibration_cpu}, {"gptq", gptq_cpu}, {"gptq_actorder", actorder_cpu},
                       {"awq", awq_cpu}}},
      {"layer_names", names},
      {"gptq_relative_errors", natural_errors},
      {"gptq_layer_seconds", natural_seconds},
      {"gptq_actorder_layer_seconds", actorder_seconds_per_layer},
      {"gptq_actorder_relative_errors", actorder_errors},
      {"stats_file", args.stats_out},
  };
  std::cout << out.dump(1) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  quantppl::startup::apply_openmp_wait_policy(argv);
  try {
    return run(argc, argv);
  } catch (const quantppl::UsageError& e) {
    std::cerr << "quantppl_method_bench: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "quantppl_method_bench: error: " << e.what() << "\n";
    return 1;
  }
}
