// Fake-quantizing a model's Linear weights in place (the originals come back
// from a WeightBackup: weight_backup.h).
//
// A variant replaces every selected weight W by fake_quantize(W) (quantize.h)
// in place, under no-grad, so the scripted module runs unchanged. Each
// variant quantizes the *original* weights, read from the backup.
#pragma once

#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/contract_model.h"
#include "quantppl/error_metrics.h"
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
  QParams params;
  ErrorMetrics error;  // original vs fake-quantized weight
};

struct ModelQuantization {
  std::vector<LayerQuantization> layers;
  ErrorMetrics total;  // over every quantized weight element (sums, not a mean of means)
};

// Restores the originals, then fake-quantizes every backed-up layer in place.
ModelQuantization apply_variant(WeightBackup& backup, const QuantConfig& config);

// The parameters apply_variant would choose, per backed-up layer, computed
// once from the originals (the costly part for percentile and MSE ranges).
std::vector<QParams> choose_variant_params(const WeightBackup& backup, const QuantConfig& config);

// Writes fake_quantize(original) into every live weight with given
// parameters (fake_quantize_into: one read of the backup, one write of the
// weight, no separate restore), bit-identical with apply_variant.
void apply_variant_params(WeightBackup& backup, const QuantConfig& config, const std::vector<QParams>& params);

}  // namespace quantppl
