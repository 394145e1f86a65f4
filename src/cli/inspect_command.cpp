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
      "for one variant, the clipped share, scale and zero point, MSE, max abs error and SQNR. No text is evaluated.");
  cmd->add_option("--model,-m", c.model, "Contract model file (.pt); default: models/default.pt");
  cmd->add_option("--tokenizer", c.tokenizer, "sentencepiece model overriding the one inside the model file (same vocabulary)");
  cmd->add_option("--variant,-v", c.variant, std::string("One variant (fp32: statistics only): ") + kVariantGrammar)
      ->capture_default_str();
  cmd->add_option("--include", c.include, "Inspect only Linear layers whose name matches this regex (RE2 syntax: no backreferences or lookaround)");
  cmd->add_option("--exclude", c.exclude, "Skip Linear layers whose name matches this regex (RE2 syntax: no backreferences or lookaround)");
  cmd->add_option("--format", c.format, "Output format")->check(CLI::IsMember({"table", "json", "csv"}))->capture_default_str();
  cmd->add_option("--output,-o", c.output, "Write the result here (atomically) instead of standard output");
  cmd->add_flag("--force", c.force, "Replace an existing --output file");
  cmd->add_flag("--quiet,-q", c.quiet, "No progress bar");
  return cmd;
}

int run_inspect_command(const InspectCommand& c) {
  const std::vector<std::string> inputs = {c.model.empty() ? default_model_path() : c.model, c.tokenizer};
  if (!c.output.empty()) check_output_path(c.output, c.force, inputs);
  InspectOptions options;
  options.model_path = c.model;
  options.tokenizer_path = c.tokenizer;
  options.variant = parse_variant(c.variant);
  options.include = c.include;
  options.exclude = c.exclude;

  ProgressBar bar(!c.quiet);
  const InspectionReport report =
      run_inspect(options, [&](size_t done, size_t total) { bar.update("inspecting layers", done, total); });
  bar.finish();

  std::string rendered;
  if (c.format == "json") {
    rendered = format_inspection_json(report);
  } else if (c.format == "csv") {
    rendered = format_inspection_csv(report);
  } else {
    rendered = format_inspection_table(report);
  }
  emit_output(rendered, c.output, c.force, inputs);
  return 0;
}

}  // namespace quantppl::cli
