#include "common_flags.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>

#include "quantppl/default_paths.h"
#include "quantppl/error.h"
#include "quantppl/output_file.h"

namespace quantppl::cli {

int64_t default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int64_t>(n);
}

CLI::Validator integer_at_least(int64_t min) {
  const std::string description = min == 0 ? "NONNEGATIVE" : min == 1 ? "POSITIVE" : ">=" + std::to_string(min);
  return CLI::Validator(
      [min](std::string& input) -> std::string {
        // Whole string, base 0 (decimal, 0x hex, 0 octal) like CLI11's integral_conversion, but
        // out-of-range input is an error here, where strtoll would clamp it to INT64_MAX.
        errno = 0;
        char* end = nullptr;
        const long long value = std::strtoll(input.c_str(), &end, 0);
        const bool parsed = !input.empty() && end == input.c_str() + input.size() && errno != ERANGE;
        if (parsed && value >= min) return {};
        return "must be an integer >= " + std::to_string(min) + ", got " + input;
      },
      description);
}

CLI::Option* add_model_flag(CLI::App* cmd, std::string& model) {
  return cmd->add_option("--model,-m", model,
                         "Contract model file (.pt) or packed model (.qpack); default: models/default.pt");
}

CLI::Option* add_tokenizer_flag(CLI::App* cmd, std::string& tokenizer) {
  return cmd->add_option("--tokenizer", tokenizer, "sentencepiece model overriding the one inside the model file (same vocabulary)");
}

CLI::Option* add_tokens_flag(CLI::App* cmd, std::string& tokens) {
  return cmd->add_option("--tokens", tokens,
                         "JSON array of token ids to evaluate instead of tokenizing a text (any tokenizer upstream; "
                         "no BOS/EOS: quantppl adds them as the mode does), or - for standard input; conflicts "
                         "with --text");
}

CLI::Option* add_mode_flags(CLI::App* cmd, PerplexityMode& mode, int64_t& stride) {
  CLI::Option* option = add_enum_option(cmd, "--mode", mode, kPerplexityModeNames,
                                        "Which tokens are scored (README: \"How perplexity is computed\")")
                            ->default_str("reconstruct for T5 models, causal for causal models");
  cmd->add_option("--stride", stride,
                  "With --mode causal: the Hugging Face sliding window, windows of --max-length advancing by N "
                  "tokens, each token scored once with at least max-length - N tokens of context (0: no stride)")
      ->check(integer_at_least(0))
      ->capture_default_str();
  return option;
}

CLI::Option* add_text_flag(CLI::App* cmd, std::string& text) {
  return cmd->add_option("--text,-t", text,
                         "UTF-8 text to evaluate, or - for standard input; default: data/default_eval.txt");
}

CLI::Option* add_format_flag(CLI::App* cmd, OutputFormat& format) {
  return add_enum_option(cmd, "--format", format, kOutputFormatNames, "Output format");
}

void add_output_flags(CLI::App* cmd, std::string& output, bool& force) {
  cmd->add_option("--output,-o", output,
                  "Write the result to this file, atomically (complete or not at all); reports otherwise go to "
                  "standard output");
  cmd->add_flag("--force", force, "Replace an existing output file (only a regular file is ever replaced)");
}

void add_layer_filter_flags(CLI::App* cmd, std::string& include, std::string& exclude) {
  cmd->add_option("--include", include,
                  "Only Linear layers whose name matches this regex (RE2 syntax: no backreferences or lookaround; searched anywhere in the name)");
  cmd->add_option("--exclude", exclude,
                  "Leave out Linear layers whose name matches this regex (applied after --include)");
}

CLI::Option* add_threads_flag(CLI::App* cmd, int64_t& threads) {
  return cmd
      ->add_option("--threads", threads,
                   "Threads for LibTorch's intra-op pool and OpenBLAS (both are set; default: all cores; capped at 2 x the cores)")
      ->check(integer_at_least(1))
      ->capture_default_str();
}

CLI::Option* add_quiet_flag(CLI::App* cmd, bool& quiet) { return cmd->add_flag("--quiet,-q", quiet, "No progress bar"); }

void add_calibration_text_flags(CLI::App* cmd, CalibrationFlags& flags) {
  cmd->add_option("--calibration", flags.text,
                  "Calibration text (UTF-8) whose activations calibrate GPTQ/AWQ; default: data/calibration.txt "
                  "(Python documentation prose, disjoint from data/default_eval.txt)");
  cmd->add_option("--calibration-tokens", flags.tokens,
                  "Calibration token positions: the first N tokens of the calibration text (the whole text if shorter), "
                  "cut into windows of the model's max_length")
      ->check(integer_at_least(1))
      ->capture_default_str();
}

CLI::Option* add_calibration_stats_flag(CLI::App* cmd, CalibrationFlags& flags) {
  return cmd->add_option("--calibration-stats", flags.stats,
                         "Reuse the statistics `quantppl calibrate --output FILE` wrote for this model (no calibration "
                         "pass; a file made from another model is an error)");
}

void add_calibration_flags(CLI::App* cmd, CalibrationFlags& flags) {
  add_calibration_text_flags(cmd, flags);
  add_calibration_stats_flag(cmd, flags);
  add_enum_option(cmd, "--calibration-mode", flags.mode, kCalibrationModeNames,
                  "How GPTQ/AWQ variants get each layer's activation statistics");
}

std::string evaluated_text_path(const std::string& text_flag, const std::string& tokens_flag) {
  if (!tokens_flag.empty()) return "";
  return text_flag.empty() ? default_text_path() : text_flag;
}

MethodRunOptions method_run_options(const CalibrationFlags& flags, const std::string& eval_text) {
  MethodRunOptions options;
  options.request = calibration_request(flags, eval_text);
  options.mode = flags.mode;
  options.warn = print_warning;
  return options;
}

CalibrationRequest calibration_request(const CalibrationFlags& flags, const std::string& eval_text) {
  CalibrationRequest request;
  request.stats_path = flags.stats;
  request.text_path = flags.text;
  request.tokens = flags.tokens;
  request.eval_text_path = eval_text;
  return request;
}

void print_warning(const std::string& message) { std::cerr << "quantppl: warning: " << printable(message) << "\n"; }

void emit_output(const std::string& rendered, const std::string& output_path, bool force,
                 const std::vector<std::string>& inputs) {
  if (output_path.empty()) {
    errno = 0;
    std::cout << rendered << std::flush;
    // A full disk or closed pipe under a redirection: not a success (stdout > /dev/full exited 0).
    if (!std::cout) {
      throw IoError(std::string("cannot write the result to standard output: ") +
                    (errno != 0 ? std::strerror(errno) : "write failed"));
    }
  } else {
    write_file_atomically(output_path, rendered, force, inputs);
  }
}

}  // namespace quantppl::cli
