// `quantppl compare`: flags, then the library's run_compare, then printing.
#include <iostream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "commands.h"
#include "progress.h"
#include "quantppl/compare.h"
#include "quantppl/output_file.h"
#include "quantppl/regression_check.h"
#include "quantppl/report.h"
#include "quantppl/variant_spec.h"

namespace quantppl::cli {

CLI::App* setup_compare(CLI::App& app, CompareCommand& c) {
  auto* cmd = app.add_subcommand(
      "compare",
      "Perplexity of the original model and of each quantized variant, side by side.\n"
      "With no arguments: the shipped default model and text, variants fp32,absmax:8,zeropoint:8.");
  cmd->add_option("--model,-m", c.model, "Contract model file (.pt) or packed model (.qpack); default: models/default.pt");
  cmd->add_option("--tokenizer", c.tokenizer, "sentencepiece model overriding the one inside the model file (same vocabulary)");
  cmd->add_option("--text,-t", c.text, "UTF-8 text to evaluate, or - for standard input; default: data/default_eval.txt");
  c.variants = kDefaultVariants;
  cmd->add_option("--variants,-v", c.variants,
                  std::string("Comma-separated variants: ") + kVariantGrammar)
      ->capture_default_str();
  cmd->add_option("--mode", c.mode,
                  "reconstruct: encoder and labels = the window (the seed tutorial's perplexity); "
                  "prefix: encoder = first half, labels = second half (continuation perplexity)")
      ->check(CLI::IsMember({"reconstruct", "prefix"}))
      ->capture_default_str();
  cmd->add_option("--max-length", c.max_length, "Window length in tokens (0: the model's max_length)")
      ->check(integer_at_least(0))
      ->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size,
                  "Windows per forward pass; more use more memory (the fp32 and a variant's logits, "
                  "B x window x vocabulary floats each) and were no faster on CPU")->check(integer_at_least(1))->capture_default_str();
  cmd->add_option("--threads", c.threads,
                  "Threads for LibTorch's intra-op pool and OpenBLAS (both are set; default: all cores; capped at 2 x the cores)")
      ->check(integer_at_least(1))
      ->capture_default_str();
  cmd->add_option("--format", c.format, "Output format")->check(CLI::IsMember({"table", "json", "csv"}))->capture_default_str();
  cmd->add_option("--output,-o", c.output, "Write the result here (atomically) instead of standard output");
  cmd->add_flag("--force", c.force, "Replace an existing --output file");
  cmd->add_option("--check", c.check,
                  "Expected perplexities (JSON); exit 1 if any variant drifts beyond its tolerance. "
                  "Without --variants, evaluates the variants the file lists");
  cmd->add_option("--include", c.include, "Quantize only Linear layers whose name matches this regex (RE2 syntax: no backreferences or lookaround)");
  cmd->add_option("--exclude", c.exclude, "Do not quantize Linear layers whose name matches this regex (RE2 syntax: no backreferences or lookaround)");
  cmd->add_option("--backup", c.backup,
                  "Where the original weights are kept between variants: memory, file (an unlinked temporary "
                  "file in $TMPDIR, paged in per layer: for models larger than half the RAM), or auto "
                  "(memory when it fits in available RAM with 1 GiB to spare)")
      ->check(CLI::IsMember({"auto", "memory", "file"}))
      ->capture_default_str();
  cmd->add_flag("--quiet,-q", c.quiet, "No progress bar");
  cmd->add_flag("--verbose", c.verbose,
                "Print the runtime choices (threads, BLAS, wait policy, kernels, weight backup) and timings on stderr");
  return cmd;
}

int run_compare_command(const CompareCommand& c, bool variants_given) {
  // What the run reads, which --output must not replace.
  const std::vector<std::string> inputs = {c.model.empty() ? default_model_path() : c.model, c.tokenizer,
                                           c.text.empty() ? default_text_path() : c.text, c.check};
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
  options.mode = c.mode == "prefix" ? PerplexityMode::kPrefix : PerplexityMode::kReconstruct;
  options.max_length = c.max_length;
  options.batch_size = c.batch_size;
  options.threads = c.threads;
  options.include = c.include;
  options.exclude = c.exclude;
  options.backup = parse_backup_storage(c.backup);
  options.threads = setup_runtime(c.threads, c.verbose);

  ProgressBar bar(!c.quiet);
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

  std::string rendered;
  if (c.format == "json") {
    rendered = format_json(report);
  } else if (c.format == "csv") {
    rendered = format_csv(report);
  } else {
    rendered = format_table(report);
  }
  emit_output(rendered, c.output, c.force, inputs);

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
