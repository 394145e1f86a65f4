#include "quantppl/quantize_model.h"

#include "quantppl/contract_model.h"
#include "quantppl/default_paths.h"
#include "quantppl/error.h"
#include "quantppl/model_metadata.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/output_file.h"
#include "quantppl/packed_model.h"

namespace quantppl {

QuantizeModelSummary quantize_model_file(const QuantizeModelOptions& options) {
  if (options.variant.is_fp32) throw UsageError("--variant fp32 would write an unchanged copy; name a quantized variant");
  const std::string model_path = options.model_path.empty() ? default_model_path() : options.model_path;
  check_output_path(options.output_path, options.force, {model_path, options.tokenizer_path});
  ContractModel model = load_model_file(model_path, options.tokenizer_path);
  WeightBackup backup(select_layers(model.linear_layers(), options.include, options.exclude));
  const RunCalibration calibration =
      calibrate_for_run(model, backup.layers(), {options.variant}, options.methods);
  const PreparedVariant prepared = prepare_method_variant(backup, options.variant, calibration.view(model));
  apply_prepared(backup, prepared.layers);
  ModelQuantization quantization;
  for (size_t l = 0; l < backup.layers().size(); ++l) {
    LayerQuantization layer;
    layer.name = backup.layers()[l].name;
    layer.error = error_metrics(backup.original(l), backup.layers()[l].weight);
    quantization.total.merge(layer.error);
    quantization.layers.push_back(std::move(layer));
  }
  model.save(options.output_path, metadata_with_variant(model.metadata().json_text, canonical_spec(options.variant)));
  QuantizeModelSummary summary;
  summary.layers = static_cast<int64_t>(quantization.layers.size());
  summary.parameters = backup.parameter_count();
  summary.weight_mse = quantization.total.mse();
  summary.weight_sqnr_db = quantization.total.sqnr_db();
  for (size_t i = 0; i < quantization.layers.size(); ++i) {
    const torch::Tensor& w = backup.layers()[i].weight;
    const std::optional<int64_t> exact = prepared.layers[i]->packed_bytes();
    summary.packed_bytes += exact ? *exact : options.variant.format->packed_bytes(w.size(0), w.size(1));
  }
  if (summary.parameters > 0) {
    summary.bits_per_weight = 8.0 * static_cast<double>(summary.packed_bytes) / static_cast<double>(summary.parameters);
  }
  return summary;
}

}  // namespace quantppl
