// Fake-quantizing a model's Linear weights in place, and putting them back.
//
// A variant replaces every selected weight W by fake_quantize(W) (quantize.h)
// in place, under no-grad, so the scripted module runs unchanged. Between
// variants the originals come back bit-for-bit from a backup that is
// allocated once (one copy of the selected weights), not per variant.
// Each variant quantizes the *original* weights: restore() runs first.
#pragma once

#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/contract_model.h"
#include "quantppl/error_metrics.h"
#include "quantppl/quantize.h"

namespace quantppl {

// Layers whose name matches `include` and does not match `exclude`
// (ECMAScript regular expressions, matched anywhere in the name as
// std::regex_search does; an empty pattern means "all" for include and
// "none" for exclude). Throws UsageError for an invalid pattern (naming the
// flag) or when nothing is selected.
std::vector<LinearLayer> select_layers(const std::vector<LinearLayer>& layers, const std::string& include,
                                       const std::string& exclude);

// One contiguous copy of every selected weight, made once.
class WeightBackup {
 public:
  explicit WeightBackup(std::vector<LinearLayer> layers);
  // Copies the originals back into the live weights (bit-for-bit).
  void restore();
  const std::vector<LinearLayer>& layers() const { return layers_; }
  const torch::Tensor& original(size_t i) const { return originals_[i]; }
  int64_t parameter_count() const;

 private:
  std::vector<LinearLayer> layers_;
  std::vector<torch::Tensor> originals_;
};

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

// Restores the originals and fake-quantizes them in place with given
// parameters: one copy and one pass, bit-identical with apply_variant.
void apply_variant_params(WeightBackup& backup, const QuantConfig& config, const std::vector<QParams>& params);

}  // namespace quantppl
