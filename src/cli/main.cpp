// quantppl: the command-line shell over the library. Parses, calls, prints.
//
// Exit codes (also in README.md):
//   0  success
//   1  `compare --check`: a perplexity drifted beyond its tolerance
//   2  usage error: a malformed flag, variant spec or option combination
//   3  data error: the model, tokenizer or text is unusable
//   4  I/O error: a file could not be read or written
//   5  internal error (a bug: please report it)
//   130 interrupted (SIGINT); no partial output file is left behind
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <torch/torch.h>

#include "progress.h"
#include "quantppl/compare.h"
#include "quantppl/error.h"
#include "quantppl/output_file.h"
#include "quantppl/quantize_model.h"
#include "quantppl/regression_check.h"
#include "quantppl/report.h"
#include "quantppl/variant_spec.h"

namespace quantppl::cli {
namespace {

constexpr int kExitRegression = 1;
constexpr int kExitUsage = 2;
constexpr int kExitData = 3;
constexpr int kExitIo = 4;
constexpr int kExitInternal = 5;

int64_t default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int64_t>(n);
}

// ---- compare ----

struct CompareCommand {
  std::string model;
  std::string tokenizer;
  std::string text;
  std::string variants = kDefaultVariants;
  std::string mode = "reconstruct";
  int64_t max_length = 0;
  int64_t batch_size = 8;
  int64_t threads = default_threads();
  std::string format = "table";
  std::string output;
  std::string check;
  std::string include;
  std::string exclude;
  bool force = false;
  bool quiet = false;
};

void setup_compare(CLI::App& app, CompareCommand& c) {
  auto* cmd = app.add_subcommand(
      "compare",
      "Perplexity of the original model and of each quantized variant, side by side.\n"
      "With no arguments: the shipped default model and text, variants fp32,absmax:8,zeropoint:8.");
  cmd->add_option("--model,-m", c.model, "Contract model file (.pt); default: models/default.pt");
  cmd->add_option("--tokenizer", c.tokenizer, "sentencepiece model overriding the one inside the model file");
  cmd->add_option("--text,-t", c.text, "UTF-8 text to evaluate, or - for standard input; default: data/default_eval.txt");
  cmd->add_option("--variants,-v", c.variants,
                  std::string("Comma-separated variants: ") + kVariantGrammar)
      ->capture_default_str();
  cmd->add_option("--mode", c.mode,
                  "reconstruct: encoder and labels = the window (the seed tutorial's perplexity); "
                  "prefix: encoder = first half, labels = second half (continuation perplexity)")
      ->check(CLI::IsMember({"reconstruct", "prefix"}))
      ->capture_default_str();
  cmd->add_option("--max-length", c.max_length, "Window length in tokens (0: the model's max_length)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size, "Windows per forward pass")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--threads", c.threads, "LibTorch intra-op threads (default: all cores)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--format", c.format, "Output format")->check(CLI::IsMember({"table", "json", "csv"}))->capture_default_str();
  cmd->add_option("--output,-o", c.output, "Write the result here (atomically) instead of standard output");
  cmd->add_flag("--force", c.force, "Replace an existing --output file");
  cmd->add_option("--check", c.check,
                  "Expected perplexities (JSON); exit 1 if any variant drifts beyond its tolerance. "
                  "Without --variants, evaluates the variants the file lists");
  cmd->add_option("--include", c.include, "Quantize only Linear layers whose name matches this regex");
  cmd->add_option("--exclude", c.exclude, "Do not quantize Linear layers whose name matches this regex");
  cmd->add_flag("--quiet,-q", c.quiet, "No progress bar");
}

int run_compare_command(const CompareCommand& c, bool variants_given) {
  if (!c.output.empty()) check_output_path(c.output, c.force);
  std::vector<ExpectedPerplexity> expected;
  std::string variant_specs = c.variants;
  if (!c.check.empty()) {
    expected = read_expected_perplexities(c.check);
    if (!variants_given) variant_specs = expected_variant_list(expected);
  }

  CompareOptions options;
  options.model_path = c.model;
  options.tokenizer_path = c.tokenizer;
  options.text_path = c.text;
  options.variants = parse_variant_list(variant_specs);
  options.mode = c.mode == "prefix" ? PerplexityMode::kPrefix : PerplexityMode::kReconstruct;
  options.max_length = c.max_length;
  options.batch_size = c.batch_size;
  options.threads = c.threads;
  options.include = c.include;
  options.exclude = c.exclude;
  at::set_num_threads(static_cast<int>(c.threads));

  ProgressBar bar(!c.quiet);
  const CompareReport report = run_compare(
      options, [&](const std::string& stage, size_t index, size_t stages, size_t done, size_t total) {
        bar.update(fmt::format("[{}/{}] {}", index + 1, stages, stage), done, total);
      });
  bar.finish();

  std::string rendered;
  if (c.format == "json") {
    rendered = format_json(report);
  } else if (c.format == "csv") {
    rendered = format_csv(report);
  } else {
    rendered = format_table(report);
  }
  if (c.output.empty()) {
    std::cout << rendered << std::flush;
  } else {
    write_file_atomically(c.output, rendered, c.force);
  }

  if (!expected.empty()) {
    const std::vector<std::string> failures = check_regressions(report, expected);
    for (const std::string& f : failures) std::cerr << "quantppl: regression: " << f << "\n";
    if (!failures.empty()) return kExitRegression;
    std::cerr << fmt::format("quantppl: check passed: {} variant(s) within tolerance of {}\n", expected.size(), c.check);
  }
  return 0;
}

// ---- quantize ----

struct QuantizeCommand {
  std::string model;
  std::string tokenizer;
  std::string variant;
  std::string output;
  std::string include;
  std::string exclude;
  bool force = false;
};

void setup_quantize(CLI::App& app, QuantizeCommand& q) {
  auto* cmd = app.add_subcommand(
      "quantize",
      "Write a contract model whose selected Linear weights are replaced by their quantize-dequantize "
      "values (metadata records the variant). `compare --variants fp32` on it equals "
      "`compare --variants SPEC` on the original.");
  cmd->add_option("--model,-m", q.model, "Contract model file (.pt); default: models/default.pt");
  cmd->add_option("--tokenizer", q.tokenizer, "sentencepiece model overriding the one inside the model file");
  cmd->add_option("--variant", q.variant, std::string("One variant: ") + kVariantGrammar)->required();
  cmd->add_option("--output,-o", q.output, "Output model file, written atomically")->required();
  cmd->add_flag("--force", q.force, "Replace an existing --output file");
  cmd->add_option("--include", q.include, "Quantize only Linear layers whose name matches this regex");
  cmd->add_option("--exclude", q.exclude, "Do not quantize Linear layers whose name matches this regex");
}

int run_quantize_command(const QuantizeCommand& q) {
  check_output_path(q.output, q.force);
  QuantizeModelOptions options;
  options.model_path = q.model;
  options.tokenizer_path = q.tokenizer;
  options.variant = parse_variant(q.variant);
  options.output_path = q.output;
  options.include = q.include;
  options.exclude = q.exclude;
  options.force = q.force;
  const QuantizeModelSummary summary = quantize_model_file(options);
  std::cerr << fmt::format("quantppl: wrote {} ({}: {} Linear layers, {} weights, weight MSE {:.3e}, SQNR {:.2f} dB)\n",
                           q.output, options.variant.name, summary.layers, summary.parameters, summary.weight_mse,
                           summary.weight_sqnr_db);
  return 0;
}

int run(int argc, char** argv) {
  CLI::App app{
      "quantppl: how much does this quantization scheme hurt this model?\n"
      "Loads a TorchScript contract model (docs/model-contract.md), fake-quantizes its Linear weights "
      "and reports perplexity for the original and every variant."};
  app.set_version_flag("--version", std::string("quantppl ") + QUANTPPL_VERSION);
  app.require_subcommand(1);
  CompareCommand compare;
  QuantizeCommand quantize;
  setup_compare(app, compare);
  setup_quantize(app, quantize);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "quantppl: " << e.what() << " (see quantppl --help)\n";
    return kExitUsage;
  }
  if (app.got_subcommand("compare")) {
    return run_compare_command(compare, app.get_subcommand("compare")->count("--variants") > 0);
  }
  return run_quantize_command(quantize);
}

}  // namespace
}  // namespace quantppl::cli

int main(int argc, char** argv) {
  using namespace quantppl;
  try {
    return cli::run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "quantppl: error: " << e.what() << "\n";
    return cli::kExitUsage;
  } catch (const DataError& e) {
    std::cerr << "quantppl: error: " << e.what() << "\n";
    return cli::kExitData;
  } catch (const IoError& e) {
    std::cerr << "quantppl: error: " << e.what() << "\n";
    return cli::kExitIo;
  } catch (const c10::Error& e) {
    // LibTorch errors that escaped the library's own checks: first line only.
    const std::string what = e.what();
    std::cerr << "quantppl: internal error (LibTorch): " << what.substr(0, what.find('\n')) << "\n";
    return cli::kExitInternal;
  } catch (const std::exception& e) {
    std::cerr << "quantppl: internal error: " << e.what() << "\n";
    return cli::kExitInternal;
  }
}
