// The subcommands of the quantppl CLI: each has an options struct filled by
// CLI11, a setup_*() that declares its flags (the shared ones through
// common_flags.h), and a run_*() that calls the library and prints. Exit
// codes are defined here (README.md lists them).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common_flags.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/perplexity.h"

namespace quantppl::cli {

constexpr int kExitRegression = 1;
constexpr int kExitUsage = 2;
constexpr int kExitData = 3;
constexpr int kExitIo = 4;
constexpr int kExitInternal = 5;

// --ci-target and --seed (compare and sensitivity; early_stopping.h).
void add_early_stopping_flags(CLI::App* cmd, double& ci_target, int64_t& seed);

// --threads above this many per hardware thread only add contention (measured:
// 1000 threads on 2 cores ran 29x slower than 1); such a value is capped, with
// a warning. README "Limits".
constexpr int64_t kMaxThreadsPerHardwareThread = 2;
int64_t thread_cap();  // kMaxThreadsPerHardwareThread * default_threads()

// Applies runtime.h's settings for `threads`, capped at thread_cap() with a
// warning on stderr (call before loading a model); prints a warning on a slow
// BLAS, and with `verbose` what was chosen. Returns the threads used: the
// number to record in a report.
int64_t setup_runtime(int64_t threads, bool verbose);

struct CompareCommand {
  CalibrationFlags calibration;  // --calibration, --calibration-tokens, --calibration-stats (GPTQ/AWQ variants)
  std::string model;
  std::string tokenizer;
  std::string text;
  std::string variants;
  PerplexityMode mode = PerplexityMode::kReconstruct;
  CLI::Option* mode_flag = nullptr;  // --mode: given only if mode_flag->count() (else the model's default)
  int64_t stride = 0;                // --stride (0: none)
  std::string tokens;                // --tokens FILE
  int64_t max_length = 0;
  int64_t batch_size = 1;  // see CompareOptions::batch_size
  int64_t threads = default_threads();
  OutputFormat format = OutputFormat::kTable;
  std::string output;
  std::string check;
  std::string include;
  std::string exclude;
  BackupStorage backup = BackupStorage::kAuto;
  double ci_target = 0;        // --ci-target PCT (0: not given; early_stopping.h)
  int64_t seed = 20240613;     // --seed (early_stopping.h kDefaultSeed)
  bool force = false;
  bool quiet = false;
  bool verbose = false;
  bool stats = false;  // --stats: llama.cpp's statistics blocks after the table
};
CLI::App* setup_compare(CLI::App& app, CompareCommand& c);
int run_compare_command(const CompareCommand& c, bool variants_given);

struct QuantizeCommand {
  CalibrationFlags calibration;  // --calibration, --calibration-tokens, --calibration-stats (GPTQ/AWQ variants)
  std::string model;
  std::string tokenizer;
  std::string variant;
  std::string output;
  std::string packed;  // --packed: a .qpack instead of a fake-quantized .pt (packed_model.h)
  bool no_embed = false;
  std::string include;
  std::string exclude;
  bool force = false;
};
CLI::App* setup_quantize(CLI::App& app, QuantizeCommand& q);
int run_quantize_command(const QuantizeCommand& q);

struct InspectCommand {
  CalibrationFlags calibration;  // --calibration, --calibration-tokens, --calibration-stats (GPTQ/AWQ variants)
  std::string model;
  std::string tokenizer;
  std::string variant = "absmax:8";
  std::string include;
  std::string exclude;
  OutputFormat format = OutputFormat::kTable;
  std::string output;
  bool force = false;
  bool quiet = false;
};
CLI::App* setup_inspect(CLI::App& app, InspectCommand& c);
int run_inspect_command(const InspectCommand& c);

struct SensitivityCommand {
  CalibrationFlags calibration;  // --calibration, --calibration-tokens, --calibration-stats (GPTQ/AWQ variants)
  std::string model;
  std::string tokenizer;
  std::string text;
  std::string variant;
  std::string keep = "0,1,2,4,8";
  int64_t max_tokens = 0;
  PerplexityMode mode = PerplexityMode::kReconstruct;
  CLI::Option* mode_flag = nullptr;  // --mode: given only if mode_flag->count() (else the model's default)
  int64_t stride = 0;                // --stride (0: none)
  std::string tokens;                // --tokens FILE
  int64_t max_length = 0;
  int64_t batch_size = 8;
  int64_t threads = default_threads();
  std::string include;
  std::string exclude;
  OutputFormat format = OutputFormat::kTable;
  std::string output;
  double ci_target = 0;        // --ci-target PCT (0: not given)
  int64_t seed = 20240613;     // --seed
  bool force = false;
  bool quiet = false;
};
CLI::App* setup_sensitivity(CLI::App& app, SensitivityCommand& c);
int run_sensitivity_command(const SensitivityCommand& c);

struct CalibrateCommand {
  std::string model;
  std::string tokenizer;
  CalibrationFlags calibration;  // --calibration, --calibration-tokens
  std::string output;
  int64_t max_length = 0;
  int64_t batch_size = kDefaultCalibrationBatchSize;
  int64_t threads = default_threads();
  std::string include;
  std::string exclude;
  bool force = false;
  bool quiet = false;
};
CLI::App* setup_calibrate(CLI::App& app, CalibrateCommand& c);
int run_calibrate_command(const CalibrateCommand& c);

}  // namespace quantppl::cli
