// The flags several subcommands share, each declared here once with one help
// text, and the one way a report reaches the user (table, JSON or CSV, on
// standard output or atomically in a file).
//
// Enum-valued flags take their choices from the enum's EnumTable
// (quantppl/enum_table.h): --help lists the table's names, the flag accepts
// exactly those, and a wrong value is rejected (exit 2) with
//   "--format: unknown output format 'xml'; expected table, json or csv".
#pragma once

#include <cstdint>
#include <string>
#include <vector>
#include <type_traits>

#include <CLI/CLI.hpp>

#include "quantppl/enum_table.h"
#include "quantppl/methods/calibration.h"
#include "quantppl/methods/variant_methods.h"
#include "quantppl/perplexity.h"

namespace quantppl::cli {

enum class OutputFormat { kTable, kJson, kCsv };
inline constexpr EnumTable<OutputFormat, 3> kOutputFormatNames{"output format", {{
    {OutputFormat::kTable, "table", "aligned columns, for people"},
    {OutputFormat::kJson, "json", "one JSON object, for scripts"},
    {OutputFormat::kCsv, "csv", "a header row, then one row per variant or layer, for sweeps"},
}}};

// All cores, as std::thread::hardware_concurrency() sees them (>= 1).
int64_t default_threads();

// The check for an integer flag that must be >= `min` (0 or 1 here). The value
// is parsed as CLI11 then converts it (strtoll base 0, so the number checked is
// the number used), and a rejection reads "--threads: must be an integer >= 1,
// got 0". CLI11's PositiveNumber / NonNegativeNumber instead print their
// double range in full: "Value 0 not in range 0.000000 to 1797693134...".
CLI::Validator integer_at_least(int64_t min);

// The check for a flag naming a value of `table`'s enum. Its description
// (shown by --help) is "{a,b,c}"; it accepts exactly the names and hands
// CLI11 the value's integer, which CLI11 converts into the enum.
template <typename E, std::size_t N>
CLI::Validator choice_of(const EnumTable<E, N>& table) {
  return CLI::Validator(
      [table](std::string& input) -> std::string {
        const auto value = table.find(input);
        if (!value) return table.unknown_message(input, "");
        input = std::to_string(static_cast<std::underlying_type_t<E>>(*value));
        return {};
      },
      "{" + table.choices(",") + "}");
}

// An option bound to an enum, checked by choice_of, showing its current
// value's name as the default and every choice's help after `help`.
template <typename E, std::size_t N>
CLI::Option* add_enum_option(CLI::App* cmd, const std::string& names, E& value, const EnumTable<E, N>& table,
                             const std::string& help) {
  return cmd->add_option(names, value, help + ". " + table.described())
      ->type_name("NAME")
      ->transform(choice_of(table))
      ->default_str(std::string(table.name(value)));
}

// The shared flags.
CLI::Option* add_model_flag(CLI::App* cmd, std::string& model);          // --model,-m
CLI::Option* add_tokenizer_flag(CLI::App* cmd, std::string& tokenizer);  // --tokenizer
CLI::Option* add_text_flag(CLI::App* cmd, std::string& text);            // --text,-t
CLI::Option* add_format_flag(CLI::App* cmd, OutputFormat& format);       // --format
// --output,-o and --force.
void add_output_flags(CLI::App* cmd, std::string& output, bool& force);
// --include and --exclude.
void add_layer_filter_flags(CLI::App* cmd, std::string& include, std::string& exclude);
CLI::Option* add_threads_flag(CLI::App* cmd, int64_t& threads);  // --threads
// --tokens FILE (a JSON array of ids used instead of the text).
CLI::Option* add_tokens_flag(CLI::App* cmd, std::string& tokens);
// --mode (whose default depends on the model's architecture) and --stride;
// returns the --mode option (count() == 0: not given).
CLI::Option* add_mode_flags(CLI::App* cmd, PerplexityMode& mode, int64_t& stride);
CLI::Option* add_quiet_flag(CLI::App* cmd, bool& quiet);         // --quiet,-q

// Where calibration statistics come from (methods/calibration.h): computed from
// a calibration text, or read from a `quantppl calibrate` file.
struct CalibrationFlags {
  std::string stats;  // --calibration-stats FILE
  std::string text;   // --calibration FILE ("" : data/calibration.txt)
  int64_t tokens = kDefaultCalibrationTokens;  // --calibration-tokens N
  CalibrationMode mode = CalibrationMode::kFp32;  // --calibration-mode
};
// --calibration and --calibration-tokens.
void add_calibration_text_flags(CLI::App* cmd, CalibrationFlags& flags);
// --calibration-stats.
CLI::Option* add_calibration_stats_flag(CLI::App* cmd, CalibrationFlags& flags);
// All four, with --calibration-mode (what compare, quantize, inspect and sensitivity take).
void add_calibration_flags(CLI::App* cmd, CalibrationFlags& flags);
// The library's request for these flags; `eval_text` (the run's text, "" for
// none) is what the same-text warning compares with.
CalibrationRequest calibration_request(const CalibrationFlags& flags, const std::string& eval_text = "");
// The library's options for the methods of a run: the request, the mode, and
// warnings printed with print_warning.
MethodRunOptions method_run_options(const CalibrationFlags& flags, const std::string& eval_text = "");
// The text file a run evaluates: --text, or the default text when neither
// --text nor --tokens is given; "" when --tokens replaces the text.
std::string evaluated_text_path(const std::string& text_flag, const std::string& tokens_flag);
// Prints a calibration warning on stderr ("quantppl: warning: ...").
void print_warning(const std::string& message);

// Prints `rendered` to standard output (a failed write, e.g. a full disk under
// a redirection, is an IoError), or writes it atomically to `output_path` when
// one is given (replacing an existing regular file only with force, never one
// of `inputs`: output_file.h).
void emit_output(const std::string& rendered, const std::string& output_path, bool force,
                 const std::vector<std::string>& inputs = {});

// Renders `report` with the renderer `format` names, then emit_output.
template <typename Report>
void emit_report(const Report& report, OutputFormat format, const std::string& output_path, bool force,
                 const std::vector<std::string>& inputs, std::string (*table)(const Report&),
                 std::string (*json)(const Report&), std::string (*csv)(const Report&)) {
  std::string (*render)(const Report&) = table;
  if (format == OutputFormat::kJson) render = json;
  if (format == OutputFormat::kCsv) render = csv;
  emit_output(render(report), output_path, force, inputs);
}

}  // namespace quantppl::cli
