// A variant's weights for a model, whatever its method: the one call compare,
// quantize, inspect and sensitivity make to turn a Variant (variant_spec.h)
// into a PreparedWeight per selected Linear layer (formats/weight_format.h).
//
//   * RTN (no method): the format's own prepare() of each original weight.
//   * GPTQ, AWQ, AWQ+GPTQ, HQQ: apply_method (apply_method.h) on the original
//     weights, each result wrapped as a MethodResultWeight (method_weight.h),
//     so that it is evaluated, saved and packed like any other variant.
//
// Calibration modes (--calibration-mode) for the methods that read activation
// statistics:
//   fp32        one pass of the calibration text through the fp32 model gives
//               every layer's statistics (GPTQ's common practice; the default).
//   sequential  the paper's procedure: the model's layers are taken block by
//               block in model order (a block = the layers under one numbered
//               module, "encoder.block.3", "model.layers.7"; a layer outside
//               every numbered module is a block of its own); each block's
//               statistics are collected with every earlier block already
//               quantized, so a block compensates the error its inputs carry.
//               One calibration pass per block.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "quantppl/contract_model.h"
#include "quantppl/enum_table.h"
#include "quantppl/formats/weight_format.h"
#include "quantppl/methods/apply_method.h"
#include "quantppl/methods/calibration.h"
#include "quantppl/variant_spec.h"
#include "quantppl/weight_backup.h"

namespace quantppl {

enum class CalibrationMode { kFp32, kSequential };
inline constexpr EnumTable<CalibrationMode, 2> kCalibrationModeNames{"calibration mode", {{
    {CalibrationMode::kFp32, "fp32", "every layer's statistics from one pass through the fp32 model"},
    {CalibrationMode::kSequential, "sequential",
     "block by block, each block's inputs recomputed with the earlier blocks already quantized (one pass per block)"},
}}};

// The MethodChoice (apply_method.h) a parsed variant names. UsageError naming
// the variant when its method does not apply to its format (HQQ needs a
// zero-point grid).
MethodChoice method_choice(const Variant& variant);

// Whether the variant reads calibration statistics.
bool variant_needs_calibration(const Variant& variant);

// How calibrated methods get their statistics.
struct MethodCalibration {
  CalibrationMode mode = CalibrationMode::kFp32;
  // kFp32 (and every method's e in reports): statistics of every backed-up
  // layer, or null when no variant needs them.
  const CalibrationStats* stats = nullptr;
  // kSequential: the model whose live weights the backup holds, and the
  // calibration batches (calibration.h, calibration_inputs_for_run).
  ContractModel* model = nullptr;
  const std::vector<CalibrationBatch>* batches = nullptr;
  CalibrationProgress progress;  // kSequential: blocks done / blocks
};

// Per layer, what the method did (NaN where it does not apply).
struct LayerMethodReport {
  std::string name;
  double relative_error = std::numeric_limits<double>::quiet_NaN();      // e of gptq.h (2)
  double rtn_relative_error = std::numeric_limits<double>::quiet_NaN();  // e of RTN on the same H
  double awq_alpha = std::numeric_limits<double>::quiet_NaN();
  int hqq_iterations = 0;
};

struct PreparedVariant {
  std::vector<std::unique_ptr<PreparedWeight>> layers;  // per backed-up layer, in order
  std::vector<LayerMethodReport> reports;               // per backed-up layer, in order
};

// The variant's prepared weights for every layer of `backup`, computed from
// the originals; the live weights hold the originals again afterwards.
// UsageError when the method needs statistics that `calibration` does not
// give; apply_method's errors.
PreparedVariant prepare_method_variant(WeightBackup& backup, const Variant& variant,
                                       const MethodCalibration& calibration);

// What a run (compare, quantize, inspect, sensitivity) says about calibration:
// the CLI's --calibration, --calibration-tokens, --calibration-stats and
// --calibration-mode.
struct MethodRunOptions {
  CalibrationRequest request;
  CalibrationMode mode = CalibrationMode::kFp32;
  CalibrationWarning warn;        // the same-text warning (may be empty)
  CalibrationProgress progress;   // the calibration pass (may be empty)
};

// Where a variant's statistics came from: the `calibration` object of report rows.
struct CalibrationProvenance {
  std::string text_path;    // the calibration text (the one the statistics file names, with --calibration-stats)
  std::string text_sha256;
  int64_t tokens = 0;       // calibration token positions
  std::string stats_path;   // --calibration-stats, or ""
  std::string mode;         // "fp32" or "sequential"
};

// The calibration of one run, done once for all its variants.
struct RunCalibration {
  bool active = false;  // some variant needed it (or statistics were asked for)
  CalibrationStats stats;  // kFp32: every selected layer's; kSequential: empty
  std::vector<CalibrationBatch> batches;  // kSequential only
  CalibrationProvenance provenance;
  CalibrationMode mode = CalibrationMode::kFp32;
  // The view prepare_method_variant takes (model: the run's model).
  MethodCalibration view(ContractModel& model) const;
};

// Runs the calibration `variants` need (nothing when none needs it, unless
// `always`: inspect reports e for RTN too when statistics are given), with the
// fp32 weights in the model. UsageError for --calibration-mode sequential
// with --calibration-stats (sequential recomputes the statistics block by block
// from the text); calibration.h's errors.
RunCalibration calibrate_for_run(ContractModel& model, const std::vector<LinearLayer>& layers,
                                 const std::vector<Variant>& variants, const MethodRunOptions& options,
                                 bool always = false);

// The block a layer belongs to in sequential mode: its name up to and
// including the first all-digit component ("decoder.block.3.layer.0.SelfAttention.q"
// -> "decoder.block.3"), or the whole name.
std::string layer_block(const std::string& name);

}  // namespace quantppl
