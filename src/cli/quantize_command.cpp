// `quantppl quantize`: write a fake-quantized contract model.
#include <iostream>
#include <string>

#include <fmt/format.h>

#include "commands.h"
#include "quantppl/output_file.h"
#include "quantppl/quantize_model.h"
#include "quantppl/variant_spec.h"

namespace quantppl::cli {

CLI::App* setup_quantize(CLI::App& app, QuantizeCommand& q) {
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
  return cmd;
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

}  // namespace quantppl::cli
