// `quantppl compare`: flags, then the library's run_compare, then printing.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "commands.h"
#include "progress.h"
#include "quantppl/compare.h"
#include "quantppl/error.h"
#include "quantppl/output_file.h"
#include "quantppl/regression_check.h"
#include "quantppl/report.h"
#include "quantppl/variant_spec.h"

namespace quantppl::cli {

void add_early_stopping_flags(CLI::App* cmd, double& ci_target, int64_t& seed) {
  cmd->add_option("--ci-target", ci_target,
                  "Early stopping: evaluate the windows in a seeded random order and stop each variant once the "
                  "95% interval of its perplexity ratio to fp32 is within +-PCT% (Bonferroni-corrected over the "
                  "planned looks, so stopping keeps the 95%); under compare --check a listed variant stops only once its "
                  "pass/fail is settled at 95%. "
                  "Stopped rows report the tokens they evaluated (stopped_early). Not given: every window")
      ->check(CLI::Validator(
          [](std::string& input) -> std::string {
            char* end = nullptr;
            const double value = std::strtod(input.c_str(), &end);
            if (!input.empty() && end == input.c_str() + input.size() && value > 0 && value < 100) return {};
            return "must be a percentage in (0, 100), e.g. 1, got " + input;
          },
          "PCT"));
  cmd->add_option("--seed", seed, "Seed of the window order with --ci-target (recorded in the output)")
      ->check(integer_at_least(0))
      ->capture_default_str();
}

CLI::App* setup_compare(CLI::App& app, CompareCommand& c) {
  auto* cmd = app.add_subcommand(
      "compare",
      "Perplexity of the original model and of each quantized variant, side by side.\n"
      "With no arguments: the shipped default model and text, variants fp32,absmax:8,zeropoint:8.");
  add_model_flag(cmd, c.model);
  add_tokenizer_flag(cmd, c.tokenizer);
  add_text_flag(cmd, c.text);
  add_tokens_flag(cmd, c.tokens);
  c.variants = kDefaultVariants;
  cmd->add_option("--variants,-v", c.variants,
                  std::string("Comma-separated variants: ") + kVariantGrammar)
      ->capture_default_str();
  c.mode_flag = add_mode_flags(cmd, c.mode, c.stride);
  cmd->add_option("--max-length", c.max_length, "Window length in tokens (0: the model's max_length)")
      ->check(integer_at_least(0))
      ->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size,
                  "Windows per forward pass; more use more memory (the fp32 and a variant's logits, "
                  "B x window x vocabulary floats each) and were no faster on CPU")->check(integer_at_least(1))->capture_default_str();
  add_threads_flag(cmd, c.threads);
  add_format_flag(cmd, c.format);
  add_output_flags(cmd, c.output, c.force);
  cmd->add_flag("--stats", c.stats,
                "After the table, per variant, the statistics llama.cpp's llama-perplexity --kl-divergence prints: "
                "PPL ratio and NLL correlation, KL divergence and delta-p percentiles, same-top-token share, each "
                "with its standard error (JSON and CSV always carry them)");
  cmd->add_option("--check", c.check,
                  "Expected perplexities (JSON); exit 1 if any variant drifts beyond its tolerance. "
                  "Without --variants, evaluates the variants the file lists");
  add_layer_filter_flags(cmd, c.include, c.exclude);
  add_calibration_flags(cmd, c.calibration);
  add_enum_option(cmd, "--backup", c.backup, kBackupStorageNames, "Where the original weights are kept between variants");
  add_early_stopping_flags(cmd, c.ci_target, c.seed);
  add_quiet_flag(cmd, c.quiet);
  cmd->footer(
      "Per variant, against fp32 on the same tokens (JSON/CSV fields; README 'quantppl compare'):\n"
      "  ppl, ppl_stderr, delta_ppl_pct; kl_mean, kl_mean_stderr, kl_min, kl_p001 ... kl_p999, kl_max\n"
      "  (KL(P_fp32 || P_variant), numpy-linear percentiles 0.1,1,5,10,25,50,75,90,95,99,99.9 %);\n"
      "  top1_agreement(_stderr); delta_nll_mean, delta_nll_ci95; ppl_ratio, ppl_ratio_ci95_low/high;\n"
      "  nll_correlation; delta_p_mean(_stderr), delta_p_rms(_stderr), delta_p_min, delta_p_p001 ... delta_p_max\n"
      "  (delta p = p_variant(label) - p_fp32(label)). A standard error with N = 1 is null.\n"
      "Example: quantppl compare --variants absmax:8,zeropoint:4:group64 --stats\n"
      "  ... Mean PPL(Q)/PPL(base): 1.001598 +- 0.000755  95% CI [1.000120, 1.003079]\n"
      "      Mean KLD: 0.001244 +- 0.000022   99.0% KLD: 0.005487   Same top p: 96.404 +- 0.283 % (absmax:8)");
  cmd->add_flag("--verbose", c.verbose,
                "Print the runtime choices (threads, BLAS, wait policy, kernels, weight backup) and timings on stderr");
  return cmd;
}

int run_compare_command(const CompareCommand& c, bool variants_given) {
  if (c.stats && c.format != OutputFormat::kTable) {
    throw UsageError("--stats: only with --format table, got --format " + std::string(kOutputFormatNames.name(c.format)) +
                     " (JSON and CSV always carry every statistic)");
  }
  // What the run reads, which --output must not replace.
  const std::vector<std::string> inputs = {c.model.empty() ? default_model_path() : c.model, c.tokenizer,
                                           !c.tokens.empty() ? c.tokens : evaluated_text_path(c.text, c.tokens), c.check,
                                           c.calibration.text, c.calibration.stats};
  if (!c.output.empty()) check_output_path(c.output, c.force, inputs);
  ExpectedRun expected;
  std::string variant_specs = c.variants;
  if (!c.check.empty()) {
    expected = read_expected_run(c.check);
    if (!variants_given) variant_specs = expected_variant_list(expected.variants);
  }

  CompareOptions options;
  options.model_path = c.model;
  options.tokenizer_path = c.tokenizer;
  options.text_path = c.text;
  options.variants = parse_variant_list(variant_specs);
  if (c.mode_flag != nullptr && c.mode_flag->count() > 0) options.mode = c.mode;
  options.stride = c.stride;
  options.tokens_path = c.tokens;
  options.max_length = c.max_length;
  options.batch_size = c.batch_size;
  options.threads = c.threads;
  options.include = c.include;
  options.exclude = c.exclude;
  options.backup = c.backup;
  if (c.ci_target > 0) {
    options.ci_target_pct = c.ci_target;
    options.gate_bands = gate_bands(expected.variants);
  }
  options.seed = static_cast<uint64_t>(c.seed);
  options.threads = setup_runtime(c.threads, c.verbose);
  options.methods = method_run_options(c.calibration, evaluated_text_path(c.text, c.tokens));

  ProgressBar bar(!c.quiet);
  options.methods.progress = [&](size_t done, size_t total) { bar.update("calibrating", done, total); };
  const CompareReport report = run_compare(
      options, [&](const std::string& stage, size_t index, size_t stages, size_t done, size_t total) {
        bar.update(fmt::format("[{}/{}] {}", index + 1, stages, stage), done, total);
      });
  bar.finish();
  if (c.verbose) {
    std::cerr << fmt::format("quantppl: weight backup: {} ({:.1f} MB of Linear weights)\n", report.backup,
                             4e-6 * static_cast<double>(report.parameters_quantized));
    std::cerr << fmt::format("quantppl: load {:.2f} s, total {:.2f} s\n", report.load_seconds, report.total_seconds);
    for (const VariantResult& r : report.results) {
      std::cerr << fmt::format("quantppl: {}: {:.2f} s, {:.0f} tokens/s\n", r.variant, r.seconds,
                               r.seconds > 0 ? static_cast<double>(r.tokens) / r.seconds : 0.0);
    }
  }

  if (c.stats) {
    emit_output(format_table(report) + format_stats(report), c.output, c.force, inputs);
  } else {
    emit_report(report, c.format, c.output, c.force, inputs, format_table, format_json, format_csv);
  }

  if (!expected.variants.empty()) {
    const std::vector<std::string> failures = check_regressions(report, expected);
    for (const std::string& f : failures) std::cerr << "quantppl: regression: " << f << "\n";
    if (!failures.empty()) return kExitRegression;
    std::cerr << fmt::format("quantppl: check passed: {} variant(s) within tolerance of {}\n", expected.variants.size(),
                             c.check);
  }
  return 0;
}

}  // namespace quantppl::cli
