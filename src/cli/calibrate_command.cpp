// `quantppl calibrate`: one fp32 pass over the calibration text, the per-layer
// activation statistics (methods/calibration.h) written to a file for
// --calibration-stats (methods/calibration_file.h, docs/calibration.md).
#include <iostream>
#include <string>

#include <fmt/format.h>

#include "commands.h"
#include "progress.h"
#include "quantppl/default_paths.h"
#include "quantppl/methods/calibration.h"
#include "quantppl/methods/calibration_file.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/output_file.h"

namespace quantppl::cli {

CLI::App* setup_calibrate(CLI::App& app, CalibrateCommand& c) {
  auto* cmd = app.add_subcommand(
      "calibrate",
      "Runs the fp32 model over a calibration text and writes, for every selected Linear layer, the statistics of "
      "its input x: H = (2/N) sum x x^T, mean |x| and max |x| (with the model's and the text's sha256), for "
      "--calibration-stats. File format: docs/calibration.md.");
  cmd->add_option("--output,-o", c.output, "The statistics file to write (atomically)")->required();
  cmd->add_flag("--force", c.force, "Replace an existing output file (only a regular file is ever replaced)");
  add_model_flag(cmd, c.model);
  add_tokenizer_flag(cmd, c.tokenizer);
  add_calibration_text_flags(cmd, c.calibration);
  cmd->add_option("--max-length", c.max_length, "Window length in tokens (0: the model's max_length)")
      ->check(integer_at_least(0))
      ->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size, "Windows per forward pass (memory: all Linear inputs of one batch)")
      ->check(integer_at_least(1))
      ->capture_default_str();
  add_threads_flag(cmd, c.threads);
  add_layer_filter_flags(cmd, c.include, c.exclude);
  add_quiet_flag(cmd, c.quiet);
  return cmd;
}

int run_calibrate_command(const CalibrateCommand& c) {
  const std::string model_path = c.model.empty() ? default_model_path() : c.model;
  const std::string text_path = c.calibration.text.empty() ? default_calibration_text_path() : c.calibration.text;
  const std::vector<std::string> inputs = {model_path, c.tokenizer, text_path};
  check_output_path(c.output, c.force, inputs);
  setup_runtime(c.threads, /*verbose=*/false);

  ContractModel model = ContractModel::load(model_path, c.tokenizer);
  if (c.max_length > model.metadata().max_length) {
    throw UsageError(fmt::format("--max-length {} exceeds the model's max_length {}", c.max_length,
                                 model.metadata().max_length));
  }
  const std::vector<LinearLayer> layers = select_layers(model.linear_layers(), c.include, c.exclude);
  // Calibrating on the text compare evaluates by default makes its numbers optimistic.
  CalibrationRequest request = calibration_request(c.calibration, default_text_path());
  request.batch_size = c.batch_size;
  request.max_length = c.max_length;

  ProgressBar bar(!c.quiet);
  const CalibrationStats stats = calibration_stats_for_run(
      model, layers, request, print_warning, [&](size_t done, size_t total) { bar.update("calibrating", done, total); });
  bar.finish();
  write_calibration_stats(c.output, stats, c.force, inputs);

  int64_t groups = 0;
  for (const LayerActivationStats& s : stats.layers) groups = std::max(groups, s.shared_input + 1);
  std::cout << fmt::format("wrote {}: {} Linear layers ({} distinct inputs), {} calibration tokens of '{}' (sha256 {}), "
                           "model sha256 {}\n",
                           c.output, stats.layers.size(), groups, stats.tokens, stats.text_path, stats.text_sha256,
                           stats.model_sha256);
  return 0;
}

}  // namespace quantppl::cli
