#include "quantppl/layer_inspection.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "json_rows.h"
#include <torch/torch.h>

#include "quantppl/contract_model.h"
#include "quantppl/default_paths.h"
#include "quantppl/error.h"
#include "quantppl/formats/uniform_format.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/packed_model.h"
#include "quantppl/sha256.h"

namespace quantppl {
namespace {

using nlohmann::ordered_json;
using json_rows::csv_cell;
using json_rows::number_or_null;

// numpy.median of a [blocks, 1] parameter tensor (mean of the two middle values for an even count).
Summary3 summarize(const torch::Tensor& values) {
  const torch::Tensor sorted = std::get<0>(values.reshape({-1}).to(torch::kFloat64).sort());
  const int64_t n = sorted.numel();
  Summary3 s;
  if (n == 0) return s;
  s.min = sorted[0].item<double>();
  s.max = sorted[n - 1].item<double>();
  s.median = n % 2 == 1 ? sorted[n / 2].item<double>()
                        : 0.5 * (sorted[n / 2 - 1].item<double>() + sorted[n / 2].item<double>());
  return s;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) {
    // Appended piecewise: `"x" + std::string` trips GCC 12's -Wstringop-overflow under C++20.
    if (i > 0) s += 'x';
    s += std::to_string(shape[i]);
  }
  return s;
}

ordered_json layer_json(const LayerInspection& l, bool shape_as_list) {
  ordered_json j;
  j["name"] = l.name;
  if (shape_as_list) {
    j["shape"] = l.shape;
  } else {
    j["shape"] = shape_string(l.shape);
  }
  j["parameters"] = l.stats.parameters;
  j["min"] = l.stats.min;
  j["max"] = l.stats.max;
  j["absmax"] = l.stats.absmax;
  j["std"] = l.stats.stddev;
  j["kurtosis"] = l.stats.kurtosis;
  j["outlier_fraction_6sigma"] = l.stats.outlier_fraction_6sigma;
  const bool per_tensor = l.damage && l.damage->blocks == 1;
  if (l.damage && !l.damage->uniform_grid) {
    const VariantDamage& d = *l.damage;
    j["blocks"] = d.blocks;
    for (const char* key : {"scale", "zero_point", "scale_min", "scale_median", "scale_max", "zero_point_min",
                            "zero_point_median", "zero_point_max", "clipped_fraction"}) {
      j[key] = nullptr;
    }
    j["mse"] = d.error.mse();
    j["max_abs_error"] = d.error.max_abs_error;
    j["sqnr_db"] = number_or_null(d.error.sqnr_db());
  } else if (l.damage) {
    const VariantDamage& d = *l.damage;
    j["blocks"] = d.blocks;
    j["scale"] = per_tensor ? ordered_json(d.scale.min) : ordered_json(nullptr);
    j["zero_point"] = per_tensor ? ordered_json(d.zero_point.min) : ordered_json(nullptr);
    j["scale_min"] = d.scale.min;
    j["scale_median"] = d.scale.median;
    j["scale_max"] = d.scale.max;
    j["zero_point_min"] = d.zero_point.min;
    j["zero_point_median"] = d.zero_point.median;
    j["zero_point_max"] = d.zero_point.max;
    j["clipped_fraction"] = d.clipped_fraction;
    j["mse"] = d.error.mse();
    j["max_abs_error"] = d.error.max_abs_error;
    j["sqnr_db"] = number_or_null(d.error.sqnr_db());
  } else {
    for (const char* key : {"blocks", "scale", "zero_point", "scale_min", "scale_median", "scale_max", "zero_point_min",
                            "zero_point_median", "zero_point_max", "clipped_fraction", "mse", "max_abs_error",
                            "sqnr_db"}) {
      j[key] = nullptr;
    }
  }
  const auto nan_null = [](double x) { return std::isnan(x) ? ordered_json(nullptr) : number_or_null(x); };
  j["relative_error"] = l.method ? nan_null(l.method->relative_error) : ordered_json(nullptr);
  j["rtn_relative_error"] = l.method ? nan_null(l.method->rtn_relative_error) : ordered_json(nullptr);
  j["awq_alpha"] = l.method ? nan_null(l.method->awq_alpha) : ordered_json(nullptr);
  j["hqq_iterations"] = l.method && l.method->hqq_iterations > 0 ? ordered_json(l.method->hqq_iterations)
                                                                  : ordered_json(nullptr);
  return j;
}

ordered_json summary_json(const InspectionReport& r) {
  ordered_json j;
  j["layers"] = r.summary.layers;
  j["parameters"] = r.summary.parameters;
  if (r.is_fp32) {
    for (const char* key : {"mse", "max_abs_error", "sqnr_db", "clipped_fraction", "worst_layer", "worst_sqnr_db"}) {
      j[key] = nullptr;
    }
    return j;
  }
  j["mse"] = r.summary.error.mse();
  j["max_abs_error"] = r.summary.error.max_abs_error;
  j["sqnr_db"] = number_or_null(r.summary.error.sqnr_db());
  j["clipped_fraction"] = r.summary.clipped_known ? ordered_json(r.summary.clipped_fraction) : ordered_json(nullptr);
  j["worst_layer"] = r.summary.worst_layer;
  j["worst_sqnr_db"] = number_or_null(r.summary.worst_sqnr_db);
  return j;
}

std::string db_string(double db) { return std::isfinite(db) ? fmt::format("{:.2f}", db) : "inf"; }

}  // namespace

WeightStats weight_stats(const torch::Tensor& w, const std::string& name) {
  torch::NoGradGuard no_grad;
  if (w.numel() == 0) throw DataError(fmt::format("weight '{}' is empty: no statistics", name));
  const torch::Tensor x = w.detach().reshape({-1}).to(torch::kFloat64);
  WeightStats s;
  s.parameters = x.numel();
  s.min = x.min().item<double>();
  s.max = x.max().item<double>();
  s.absmax = std::max(std::abs(s.min), std::abs(s.max));
  s.mean = x.mean().item<double>();                       // (1)
  const torch::Tensor centred = x - s.mean;
  const torch::Tensor sq = centred.square();
  const double m2 = sq.mean().item<double>();             // (2), k = 2
  const double m4 = sq.square().mean().item<double>();    // (2), k = 4
  s.stddev = std::sqrt(m2);                                  // (3)
  s.kurtosis = m2 > 0 ? m4 / (m2 * m2) - 3.0 : 0.0;       // (4)
  s.outlier_fraction_6sigma =                              // (5)
      static_cast<double>(centred.abs().gt(6.0 * s.stddev).sum().item<int64_t>()) / static_cast<double>(s.parameters);
  return s;
}

double clipped_fraction(const torch::Tensor& w, const QParams& params, const QuantConfig& config,
                        const std::string& name) {
  torch::NoGradGuard no_grad;
  const int64_t blocks = num_blocks(w, config, name);
  if (w.numel() == 0) return 0;
  // Same dtype and the same operations as quantize.cpp's to_codes_, minus round and clamp.
  torch::Tensor u = w.detach().contiguous().view({blocks, w.numel() / blocks});
  u = config.scale_form == ScaleForm::kStep ? u / params.scale : u * params.scale;   // (6)
  if (config.scheme == Scheme::kZeroPoint) u = u + params.zero_point;
  const CodeRange codes = code_range(config);
  const torch::Tensor clipped = u.lt(static_cast<double>(codes.qmin) - 0.5) | u.gt(static_cast<double>(codes.qmax) + 0.5);  // (7)
  return static_cast<double>(clipped.sum().item<int64_t>()) / static_cast<double>(w.numel());
}

VariantDamage variant_damage(const torch::Tensor& w, const QuantConfig& config, const std::string& name) {
  torch::NoGradGuard no_grad;
  torch::Tensor w_hat = w.detach().clone(torch::MemoryFormat::Contiguous);
  const QParams params = fake_quantize_(w_hat, config, name);
  VariantDamage d;
  d.blocks = params.scale.size(0);
  d.scale = summarize(params.scale);
  d.zero_point = summarize(params.zero_point);
  d.clipped_fraction = clipped_fraction(w, params, config, name);
  d.error = error_metrics(w, w_hat);
  return d;
}

VariantDamage variant_damage(const torch::Tensor& w, const WeightFormat& format, const std::string& name) {
  if (const auto* uniform = dynamic_cast<const UniformFormat*>(&format)) return variant_damage(w, uniform->config(), name);
  torch::NoGradGuard no_grad;
  const torch::Tensor src = w.detach().contiguous();
  torch::Tensor w_hat = torch::empty_like(src, torch::MemoryFormat::Contiguous);
  format.fake_quantize_into(src, w_hat, name);
  VariantDamage d;
  d.uniform_grid = false;
  const int64_t g = format.group_columns(src.size(1), name);
  d.blocks = g == 0 ? 1 : src.numel() / g;
  d.error = error_metrics(w, w_hat);
  return d;
}

InspectionReport run_inspect(const InspectOptions& options, const InspectProgress& progress) {
  InspectionReport report;
  const std::string model_path = options.model_path.empty() ? default_model_path() : options.model_path;
  ContractModel model = load_model_file(model_path, options.tokenizer_path);
  const std::vector<LinearLayer> layers = select_layers(model.linear_layers(), options.include, options.exclude);
  report.provenance = make_provenance(model_path, model.file_sha256(), options.include, options.exclude);  // hashed while verified
  report.variant = options.variant.name;
  report.is_fp32 = options.variant.is_fp32;

  InspectionSummary& summary = report.summary;
  double clipped = 0;
  // A method's weights (and every variant's e when statistics are known).
  std::optional<PreparedVariant> method;
  if (!report.is_fp32) {
    report.method = method_label(options.variant.method);
    const bool has_method = options.variant.method != MethodKind::kRtn;
    if (has_method || options.calibrate_always) {
      WeightBackup backup(layers);
      const RunCalibration calibration =
          calibrate_for_run(model, layers, {options.variant}, options.methods, options.calibrate_always);
      if (calibration.active) report.calibration = calibration.provenance;
      method = prepare_method_variant(backup, options.variant, calibration.view(model));
      if (!has_method) method->layers.clear();  // RTN: only the reports (e); damage as below
    }
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    const LinearLayer& layer = layers[i];
    LayerInspection li;
    li.name = layer.name;
    li.shape = layer.weight.sizes().vec();
    li.stats = weight_stats(layer.weight, layer.name);
    if (!report.is_fp32) {
      if (method && !method->layers.empty()) {
        // The method's W_hat: error metrics and blocks; RTN's scales and zero points do not describe it.
        torch::NoGradGuard no_grad;
        const torch::Tensor src = layer.weight.detach().contiguous();
        torch::Tensor w_hat = torch::empty_like(src);
        method->layers[i]->fake_quantize_into(src, w_hat);
        VariantDamage d;
        d.uniform_grid = false;
        const int64_t g = options.variant.format->group_columns(src.size(1), layer.name);
        d.blocks = g == 0 ? 1 : src.numel() / g;
        d.error = error_metrics(src, w_hat);
        li.damage = d;
        method->layers[i].reset();
      } else {
        li.damage = variant_damage(layer.weight, *options.variant.format, layer.name);
      }
      if (method) li.method = method->reports[i];
      else li.method = LayerMethodReport{layer.name};
      summary.error.merge(li.damage->error);
      if (!li.damage->uniform_grid) summary.clipped_known = false;
      clipped += li.damage->clipped_fraction * static_cast<double>(li.stats.parameters);
      const double sqnr = li.damage->error.sqnr_db();
      if (summary.worst_layer.empty() || sqnr < summary.worst_sqnr_db) {
        summary.worst_layer = layer.name;
        summary.worst_sqnr_db = sqnr;
      }
    }
    summary.layers += 1;
    summary.parameters += li.stats.parameters;
    report.layers.push_back(std::move(li));
    if (progress) progress(i + 1, layers.size());
  }
  // Each layer's fraction times its size is an exact integer count (well below 2^53).
  summary.clipped_fraction = summary.parameters > 0 ? std::round(clipped) / static_cast<double>(summary.parameters) : 0;
  return report;
}

std::string format_inspection_json(const InspectionReport& r) {
  ordered_json j = to_json(r.provenance);
  j["variant"] = r.variant;
  j["method"] = r.method;
  j["calibration"] = json_rows::calibration_json(r.calibration);
  j["layers"] = ordered_json::array();
  for (const LayerInspection& l : r.layers) j["layers"].push_back(layer_json(l, /*shape_as_list=*/true));
  j["summary"] = summary_json(r);
  return j.dump(2) + "\n";
}

std::string format_inspection_csv(const InspectionReport& r) {
  const ordered_json provenance = to_json(r.provenance);  // items() would dangle on a temporary
  std::vector<ordered_json> rows;
  for (const LayerInspection& l : r.layers) {
    ordered_json row = layer_json(l, /*shape_as_list=*/false);
    row["variant"] = r.variant;
    row["method"] = r.method;
    row["calibration"] = json_rows::calibration_json(r.calibration);
    row = json_rows::flatten_calibration(row);
    for (const auto& [key, value] : provenance.items()) row[key] = value;
    rows.push_back(std::move(row));
  }
  return json_rows::csv_table(rows);
}

std::string format_inspection_table(const InspectionReport& r) {
  std::string out;
  out += fmt::format("model    {}  (sha256 {})\nvariant  {}\n\n", r.provenance.model_path,
                     r.provenance.model_sha256.substr(0, 12), r.variant);
  size_t width = 5;
  for (const LayerInspection& l : r.layers) width = std::max(width, l.name.size());
  // The method's columns, when some layer has them: e of the method and of RTN, AWQ's alpha.
  bool show_e = false, show_alpha = false;
  for (const LayerInspection& l : r.layers) {
    show_e = show_e || (l.method && !std::isnan(l.method->relative_error));
    show_alpha = show_alpha || (l.method && !std::isnan(l.method->awq_alpha));
  }
  const auto method_columns = [&](const LayerInspection* l) {
    std::string cols;
    if (show_e) {
      const auto e = [](double x) { return std::isnan(x) ? std::string("-") : fmt::format("{:.3e}", x); };
      cols += l == nullptr ? fmt::format(" {:>10} {:>10}", "e", "e RTN")
                           : fmt::format(" {:>10} {:>10}", l->method ? e(l->method->relative_error) : "-",
                                         l->method ? e(l->method->rtn_relative_error) : "-");
    }
    if (show_alpha) {
      cols += l == nullptr ? fmt::format(" {:>6}", "alpha")
                           : fmt::format(" {:>6}", l->method && !std::isnan(l->method->awq_alpha)
                                                       ? fmt::format("{:.2f}", l->method->awq_alpha)
                                                       : "-");
    }
    return cols;
  };
  out += fmt::format("{:<{}} {:>10} {:>9} {:>9} {:>9} {:>8} {:>6} {:>12} {:>10} {:>8} {:>10} {:>10} {:>8}{}\n", "layer",
                     width, "shape", "absmax", "std", "kurtosis", "out>6s", "blocks", "scale", "zero pt", "clipped",
                     "MSE", "max|err|", "SQNR dB", method_columns(nullptr));
  for (const LayerInspection& l : r.layers) {
    std::string blocks = "-", scale = "-", zero = "-", clipped = "-", mse = "-", maxerr = "-", sqnr = "-";
    if (l.damage) {
      const VariantDamage& d = *l.damage;
      blocks = std::to_string(d.blocks);
      scale = d.blocks == 1 ? fmt::format("{:.4e}", d.scale.min) : fmt::format("~{:.4e}", d.scale.median);
      zero = d.blocks == 1 ? fmt::format("{:g}", d.zero_point.min) : fmt::format("~{:g}", d.zero_point.median);
      if (d.uniform_grid) {
        clipped = fmt::format("{:.3f}%", 100.0 * d.clipped_fraction);
      } else {
        scale = zero = "-";
      }
      mse = fmt::format("{:.3e}", d.error.mse());
      maxerr = fmt::format("{:.3e}", d.error.max_abs_error);
      sqnr = db_string(d.error.sqnr_db());
    }
    out += fmt::format("{:<{}} {:>10} {:>9.4f} {:>9.4f} {:>9.2f} {:>7.4f}% {:>6} {:>12} {:>10} {:>8} {:>10} {:>10} {:>8}{}\n",
                       l.name, width, shape_string(l.shape), l.stats.absmax, l.stats.stddev, l.stats.kurtosis,
                       100.0 * l.stats.outlier_fraction_6sigma, blocks, scale, zero, clipped, mse, maxerr, sqnr,
                       method_columns(&l));
  }
  const InspectionSummary& s = r.summary;
  if (r.is_fp32) {
    out += fmt::format("\nsummary  {} layers, {} weights (fp32: nothing quantized)\n", s.layers, s.parameters);
  } else {
    const std::string clipped = s.clipped_known ? fmt::format("{:.3f}%", 100.0 * s.clipped_fraction) : "-";
    out += fmt::format("\nsummary  {} layers, {} weights: MSE {:.3e}, max|err| {:.3e}, SQNR {} dB, clipped {}; "
                       "worst layer {} ({} dB)\n",
                       s.layers, s.parameters, s.error.mse(), s.error.max_abs_error, db_string(s.error.sqnr_db()),
                       clipped, s.worst_layer, db_string(s.worst_sqnr_db));
    out += "(per-channel/group rows show the median scale and zero point, marked ~; JSON/CSV carry min/median/max)\n";
    if (show_e) {
      int64_t better = 0, known = 0;
      for (const LayerInspection& l : r.layers) {
        if (!l.method || std::isnan(l.method->relative_error) || std::isnan(l.method->rtn_relative_error)) continue;
        ++known;
        if (l.method->relative_error < l.method->rtn_relative_error) ++better;
      }
      out += fmt::format("e = tr(dW H dW^T) / tr(W H W^T) on the calibration Hessian H{}: {} lower than RTN's on {} of {} "
                         "layers\n",
                         r.calibration ? " of " + r.calibration->text_path : "", r.method, better, known);
    }
  }
  return out;
}

}  // namespace quantppl
