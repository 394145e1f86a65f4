// `quantppl inspect`: per-layer weight statistics and what one variant does to them.
#include <iostream>
#include <string>

#include <fmt/format.h>

#include "commands.h"
#include "progress.h"
#include "quantppl/compare.h"
#include "quantppl/layer_inspection.h"
#include "quantppl/output_file.h"
#include "quantppl/variant_spec.h"

namespace quantppl::cli {

CLI::App* setup_inspect(CLI::App& app, InspectCommand& c) {
  auto* cmd = app.add_subcommand(
      "inspect",
      "Per Linear layer: shape, weight statistics (min/max/absmax/std, excess kurtosis, share beyond 6 sigma) and, "
      "for one variant, the clipped share, scale and zero point, MSE, max abs error and SQNR. No text is evaluated. "
      "With a method (SPEC+gptq, +awq, ...) or with --calibration/--calibration-stats, also each layer's relative "
      "output error e = tr(dW H dW^T) / tr(W H W^T) on the calibration Hessian, for the method and for RTN side by "
      "side, and AWQ's chosen alpha.");
  add_model_flag(cmd, c.model);
  add_tokenizer_flag(cmd, c.tokenizer);
  cmd->add_option("--variant,-v", c.variant, std::string("One variant (fp32: statistics only): ") + kVariantGrammar)
      ->capture_default_str();
  add_layer_filter_flags(cmd, c.include, c.exclude);
  add_calibration_flags(cmd, c.calibration);
  add_format_flag(cmd, c.format);
  add_output_flags(cmd, c.output, c.force);
  add_quiet_flag(cmd, c.quiet);
  return cmd;
}

int run_inspect_command(const InspectCommand& c) {
  const std::vector<std::string> inputs = {c.model.empty() ? default_model_path() : c.model, c.tokenizer,
                                           c.calibration.text, c.calibration.stats};
  if (!c.output.empty()) check_output_path(c.output, c.force, inputs);
  InspectOptions options;
  options.model_path = c.model;
  options.tokenizer_path = c.tokenizer;
  options.variant = parse_variant(c.variant);
  options.include = c.include;
  options.exclude = c.exclude;
  options.methods = method_run_options(c.calibration);
  options.calibrate_always = !c.calibration.text.empty() || !c.calibration.stats.empty();

  ProgressBar bar(!c.quiet);
  options.methods.progress = [&](size_t done, size_t total) { bar.update("calibrating", done, total); };
  const InspectionReport report =
      run_inspect(options, [&](size_t done, size_t total) { bar.update("inspecting layers", done, total); });
  bar.finish();

  emit_report(report, c.format, c.output, c.force, inputs, format_inspection_table, format_inspection_json,
              format_inspection_csv);
  return 0;
}

}  // namespace quantppl::cli
