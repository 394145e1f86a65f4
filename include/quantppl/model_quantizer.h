// Fake-quantizing a model's Linear weights in place (the originals come back
// from a WeightBackup: weight_backup.h).
//
// A variant replaces every selected weight W by its format's x_hat
// (WeightFormat::fake_quantize_into, formats/weight_format.h) in place, under
// no-grad, so the scripted module runs unchanged. Each variant quantizes the
// *original* weights, read from the backup. The QuantConfig overloads are the
// uniform format's (formats/uniform_format.h), kept for the seeds' tests.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/contract_model.h"
#include "quantppl/error_metrics.h"
#include "quantppl/formats/weight_format.h"
#include "quantppl/quantize.h"
#include "quantppl/weight_backup.h"  // WeightBackup and BackupStorage lived here before

namespace quantppl {

// Layers whose name matches `include` and does not match `exclude`, matched
// anywhere in the name (a search, as RE2::PartialMatch; anchor with ^ and $).
// The patterns are RE2 syntax (https://github.com/google/re2/wiki/Syntax):
// what ECMAScript regexes have except backreferences (\1) and lookaround
// ((?=, (?!, (?<=). Matching takes time linear in the name whatever the
// pattern, and compiling one may use at most kMaxLayerPatternMemory. An empty
// pattern means "all" for include and "none" for exclude. Throws UsageError
// naming the flag for a pattern RE2 rejects, or when nothing is selected.
constexpr int64_t kMaxLayerPatternMemory = int64_t{8} << 20;
std::vector<LinearLayer> select_layers(const std::vector<LinearLayer>& layers, const std::string& include,
                                       const std::string& exclude);

struct LayerQuantization {
  std::string name;
  std::unique_ptr<PreparedWeight> prepared;  // its parameters (pack() writes it at its real width)
  ErrorMetrics error;  // original vs fake-quantized weight
};

struct ModelQuantization {
  std::vector<LayerQuantization> layers;
  ErrorMetrics total;  // over every quantized weight element (sums, not a mean of means)
};

// Restores the originals, then fake-quantizes every backed-up layer in place.
ModelQuantization apply_variant(WeightBackup& backup, const WeightFormat& format);
ModelQuantization apply_variant(WeightBackup& backup, const QuantConfig& config);

// The parameters apply_variant would choose, per backed-up layer, computed
// once from the originals (the costly part for percentile and MSE ranges),
// with WeightFormat::prepare_many (batched) unless the backup drops pages.
std::vector<std::unique_ptr<PreparedWeight>> prepare_variant(const WeightBackup& backup, const WeightFormat& format);

// Writes x_hat(original) into every live weight with prepared parameters
// (one read of the backup, one write of the weight, no separate restore),
// bit-identical with apply_variant.
void apply_prepared(WeightBackup& backup, const std::vector<std::unique_ptr<PreparedWeight>>& prepared);

// The uniform format's forms of the two above, with quantize.h's QParams.
std::vector<QParams> choose_variant_params(const WeightBackup& backup, const QuantConfig& config);
void apply_variant_params(WeightBackup& backup, const QuantConfig& config, const std::vector<QParams>& params);

// Storage of the prepared layers at the format's real width (sum of pack()'s
// section bytes, without packing) and bits_per_weight = 8 * bytes / weights.
int64_t prepared_packed_bytes(const WeightBackup& backup, const WeightFormat& format,
                              const std::vector<std::unique_ptr<PreparedWeight>>& prepared);

}  // namespace quantppl
