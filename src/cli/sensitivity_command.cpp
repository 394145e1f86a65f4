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
      "the perplexity when the K most damaging layers stay fp32, and the damage of quantizing only one part (T5: "
      "the encoder, the decoder, lm_head; causal models: each decoder block layers.N, lm_head). Cost: about "
      "(layers + parts + 2) x the text's forward passes; use --max-tokens.");
  add_model_flag(cmd, c.model);
  add_tokenizer_flag(cmd, c.tokenizer);
  add_text_flag(cmd, c.text);
  add_tokens_flag(cmd, c.tokens);
  cmd->add_option("--variant,-v", c.variant, std::string("One quantized variant: ") + kVariantGrammar)->required();
  cmd->add_option("--keep", c.keep,
                  "Comma-separated K values: perplexity with the K most damaging layers kept fp32 "
                  "(values above the number of layers are clipped)")
      ->capture_default_str();
  cmd->add_option("--max-tokens", c.max_tokens, "Use only the first N tokens of the text (0: all)")
      ->check(integer_at_least(0))
      ->capture_default_str();
  c.mode_flag = add_mode_flags(cmd, c.mode, c.stride);
  cmd->add_option("--max-length", c.max_length, "Window length in tokens (0: the model's max_length)")
      ->check(integer_at_least(0))
      ->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size, "Windows per forward pass")->check(integer_at_least(1))->capture_default_str();
  add_threads_flag(cmd, c.threads);
  add_layer_filter_flags(cmd, c.include, c.exclude);
  add_calibration_flags(cmd, c.calibration);
  add_format_flag(cmd, c.format);
  add_output_flags(cmd, c.output, c.force);
  add_early_stopping_flags(cmd, c.ci_target, c.seed);
  add_quiet_flag(cmd, c.quiet);
  return cmd;
}

int run_sensitivity_command(const SensitivityCommand& c) {
  SensitivityOptions options;
  options.keep = parse_keep_list(c.keep);
  options.variant = parse_variant(c.variant);
  const std::vector<std::string> inputs = {c.model.empty() ? default_model_path() : c.model, c.tokenizer,
                                           !c.tokens.empty() ? c.tokens : evaluated_text_path(c.text, c.tokens),
                                           c.calibration.text, c.calibration.stats};
  if (!c.output.empty()) check_output_path(c.output, c.force, inputs);
  options.methods = method_run_options(c.calibration, evaluated_text_path(c.text, c.tokens));
  options.model_path = c.model;
  options.tokenizer_path = c.tokenizer;
  options.text_path = c.text;
  options.max_tokens = c.max_tokens;
  if (c.mode_flag != nullptr && c.mode_flag->count() > 0) options.mode = c.mode;
  options.stride = c.stride;
  options.tokens_path = c.tokens;
  options.max_length = c.max_length;
  options.batch_size = c.batch_size;
  options.threads = c.threads;
  options.include = c.include;
  options.exclude = c.exclude;
  if (c.ci_target > 0) options.ci_target_pct = c.ci_target;
  options.seed = static_cast<uint64_t>(c.seed);
  options.threads = setup_runtime(c.threads, /*verbose=*/false);

  ProgressBar bar(!c.quiet);
  const SensitivityReport report = run_sensitivity(
      options, [&](const std::string& stage, size_t done, size_t total) { bar.update(stage, done, total); });
  bar.finish();

  emit_report(report, c.format, c.output, c.force, inputs, format_sensitivity_table, format_sensitivity_json,
              format_sensitivity_csv);
  return 0;
}

}  // namespace quantppl::cli
