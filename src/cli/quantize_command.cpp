// `quantppl quantize`: write a fake-quantized contract model.
#include <iostream>
#include <string>

#include <fmt/format.h>

#include "commands.h"
#include "quantppl/default_paths.h"
#include "quantppl/error.h"
#include "quantppl/output_file.h"
#include "quantppl/packed_model.h"
#include "quantppl/quantize_model.h"
#include "quantppl/variant_spec.h"

namespace quantppl::cli {

CLI::App* setup_quantize(CLI::App& app, QuantizeCommand& q) {
  auto* cmd = app.add_subcommand(
      "quantize",
      "Write a contract model whose selected Linear weights are replaced by their quantize-dequantize "
      "values (metadata records the variant): --output FILE.pt, or --packed FILE.qpack for real low-bit storage "
      "(--force replaces either). `compare --variants fp32` on it equals `compare --variants SPEC` on the original.");
  add_model_flag(cmd, q.model);
  add_tokenizer_flag(cmd, q.tokenizer);
  cmd->add_option("--variant", q.variant, std::string("One variant: ") + kVariantGrammar)->required();
  add_output_flags(cmd, q.output, q.force);
  cmd->add_option("--packed", q.packed,
                  "Instead of --output: write a .qpack with the codes at their real width and the scales in their "
                  "real type, and the model without its quantized float32 weights (smaller than the model; "
                  "docs/qpack-format.md), atomically; `--model FILE.qpack` evaluates it");
  cmd->add_flag("--no-embed", q.no_embed,
                "With --packed: reference the model by path + SHA-256 instead of embedding its bytes");
  add_layer_filter_flags(cmd, q.include, q.exclude);
  cmd->footer(variant_help_table());
  add_calibration_flags(cmd, q.calibration);
  return cmd;
}

int run_quantize_command(const QuantizeCommand& q) {
  if (q.output.empty() == q.packed.empty()) {
    throw UsageError("quantize needs exactly one of --output FILE.pt and --packed FILE.qpack");
  }
  if (q.no_embed && q.packed.empty()) throw UsageError("--no-embed applies only to --packed");
  if (!q.packed.empty()) {
    if (!q.tokenizer.empty()) {
      throw UsageError("--tokenizer cannot be stored in a --packed file; pass it when evaluating the .qpack");
    }
    const Variant variant = parse_variant(q.variant);
    const std::string model = q.model.empty() ? default_model_path() : q.model;
    check_output_path(q.packed, q.force, {model, q.calibration.text, q.calibration.stats});
    const PackedModelSummary s = write_packed_model(model, variant, q.include, q.exclude, q.packed, q.force,
                                                    /*embed=*/!q.no_embed, method_run_options(q.calibration));
    std::cerr << fmt::format(
        "quantppl: wrote {} ({}: {} Linear layers, {} weights; {} bytes packed vs {} fp32 (x{:.2f}), {:.4g} bits per "
        "weight; file {} bytes vs the original model's {} bytes ({:.1f}%){})\n",
        q.packed, variant.name, s.layers, s.parameters, s.packed_bytes, s.fp32_bytes,
        static_cast<double>(s.fp32_bytes) / static_cast<double>(s.packed_bytes), s.bits_per_weight, s.file_bytes,
        s.source_bytes, 100.0 * static_cast<double>(s.file_bytes) / static_cast<double>(s.source_bytes),
        q.no_embed ? ", model referenced" : ", model embedded without its quantized weights");
    return 0;
  }
  check_output_path(q.output, q.force, {q.model.empty() ? default_model_path() : q.model, q.tokenizer,
                                       q.calibration.text, q.calibration.stats});
  QuantizeModelOptions options;
  options.model_path = q.model;
  options.tokenizer_path = q.tokenizer;
  options.variant = parse_variant(q.variant);
  options.output_path = q.output;
  options.include = q.include;
  options.exclude = q.exclude;
  options.force = q.force;
  options.methods = method_run_options(q.calibration);
  const QuantizeModelSummary summary = quantize_model_file(options);
  std::cerr << fmt::format("quantppl: wrote {} ({}: {} Linear layers, {} weights, weight MSE {:.3e}, SQNR {:.2f} dB; "
                           "{:.4g} bits per weight packed)\n",
                           q.output, options.variant.name, summary.layers, summary.parameters, summary.weight_mse,
                           summary.weight_sqnr_db, summary.bits_per_weight);
  return 0;
}

}  // namespace quantppl::cli
