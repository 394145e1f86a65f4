// `quantppl sensitivity`: rank Linear layers by the damage one variant does to each alone.
#include <iostream>
#include <string>

#include <fmt/format.h>
#include <torch/torch.h>

#include "commands.h"
#include "progress.h"
#include "quantppl/compare.h"
#include "quantppl/output_file.h"
#include "quantppl/sensitivity.h"
#include "quantppl/variant_spec.h"

namespace quantppl::cli {

CLI::App* setup_sensitivity(CLI::App& app, SensitivityCommand& c) {
  auto* cmd = app.add_subcommand(
      "sensitivity",
      "Quantizes one Linear layer at a time (all others fp32), ranks layers by the perplexity damage, then reports "
      "the perplexity when the K most damaging layers stay fp32, and the damage of quantizing only the encoder, "
      "only the decoder, only lm_head. Cost: (layers + 5) x the text's forward passes; use --max-tokens.");
  cmd->add_option("--model,-m", c.model, "Contract model file (.pt); default: models/default.pt");
  cmd->add_option("--tokenizer", c.tokenizer, "sentencepiece model overriding the one inside the model file (same vocabulary)");
  cmd->add_option("--text,-t", c.text, "UTF-8 text to evaluate, or - for standard input; default: data/default_eval.txt");
  cmd->add_option("--variant,-v", c.variant, std::string("One quantized variant: ") + kVariantGrammar)->required();
  cmd->add_option("--keep", c.keep,
                  "Comma-separated K values: perplexity with the K most damaging layers kept fp32 "
                  "(values above the number of layers are clipped)")
      ->capture_default_str();
  cmd->add_option("--max-tokens", c.max_tokens, "Use only the first N tokens of the text (0: all)")
      ->check(integer_at_least(0))
      ->capture_default_str();
  cmd->add_option("--mode", c.mode, "reconstruct | prefix (as in compare)")
      ->check(CLI::IsMember({"reconstruct", "prefix"}))
      ->capture_default_str();
  cmd->add_option("--max-length", c.max_length, "Window length in tokens (0: the model's max_length)")
      ->check(integer_at_least(0))
      ->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size, "Windows per forward pass")->check(integer_at_least(1))->capture_default_str();
  cmd->add_option("--threads", c.threads, "LibTorch intra-op threads (default: all cores; capped at 2 x the cores)")
      ->check(integer_at_least(1))
      ->capture_default_str();
  cmd->add_option("--include", c.include, "Consider only Linear layers whose name matches this regex (RE2 syntax: no backreferences or lookaround)");
  cmd->add_option("--exclude", c.exclude, "Leave out (never quantize) Linear layers whose name matches this regex (RE2 syntax: no backreferences or lookaround)");
  cmd->add_option("--format", c.format, "Output format")->check(CLI::IsMember({"table", "json", "csv"}))->capture_default_str();
  cmd->add_option("--output,-o", c.output, "Write the result here (atomically) instead of standard output");
  cmd->add_flag("--force", c.force, "Replace an existing --output file");
  cmd->add_flag("--quiet,-q", c.quiet, "No progress bar");
  return cmd;
}

int run_sensitivity_command(const SensitivityCommand& c) {
  SensitivityOptions options;
  options.keep = parse_keep_list(c.keep);
  options.variant = parse_variant(c.variant);
  const std::vector<std::string> inputs = {c.model.empty() ? default_model_path() : c.model, c.tokenizer,
                                           c.text.empty() ? default_text_path() : c.text};
  if (!c.output.empty()) check_output_path(c.output, c.force, inputs);
  options.model_path = c.model;
  options.tokenizer_path = c.tokenizer;
  options.text_path = c.text;
  options.max_tokens = c.max_tokens;
  options.mode = c.mode == "prefix" ? PerplexityMode::kPrefix : PerplexityMode::kReconstruct;
  options.max_length = c.max_length;
  options.batch_size = c.batch_size;
  options.threads = c.threads;
  options.include = c.include;
  options.exclude = c.exclude;
  options.threads = setup_runtime(c.threads, /*verbose=*/false);

  ProgressBar bar(!c.quiet);
  const SensitivityReport report = run_sensitivity(
      options, [&](const std::string& stage, size_t done, size_t total) { bar.update(stage, done, total); });
  bar.finish();

  std::string rendered;
  if (c.format == "json") {
    rendered = format_sensitivity_json(report);
  } else if (c.format == "csv") {
    rendered = format_sensitivity_csv(report);
  } else {
    rendered = format_sensitivity_table(report);
  }
  emit_output(rendered, c.output, c.force, inputs);
  return 0;
}

}  // namespace quantppl::cli
