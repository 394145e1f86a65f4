// `quantppl inspect`: per Linear layer, what the weights look like and what
// one variant does to them, without running the model.
//
// ---------------------------------------------------------------------------
// Weight statistics (over the n elements w_i of one weight matrix; sums in
// float64)
// ---------------------------------------------------------------------------
//   (1) mu    = sum(w_i) / n
//   (2) m_k   = sum((w_i - mu)^k) / n                 (central moments)
//   (3) std   = sqrt(m_2)                             (population std, torch.std(unbiased=False))
//   (4) kurtosis = m_4 / m_2^2 - 3                    (excess kurtosis: 0 for a Gaussian,
//                                                      -1.2 for a uniform; heavy tails -> large)
//       (0 when m_2 = 0: a constant matrix has no tails)
//   (5) outlier_fraction_6sigma = #{ i : |w_i - mu| > 6 std } / n
//       (a Gaussian has ~2e-9 of its mass there: any visible share is an outlier population
//        that stretches a min-max range)
//
// ---------------------------------------------------------------------------
// What the variant does (quantize.h's equations (1)-(6))
// ---------------------------------------------------------------------------
//   (6) u_i = w_i / s + z     (the unrounded code; w_i * k + z for ScaleForm::kInverseStep)
//   (7) clipped_fraction = #{ i : u_i < qmin - 0.5  or  u_i > qmax + 0.5 } / n
//       i.e. the share of weights that clamp() in (1) moves by more than rounding would:
//       0 for min-max ranges (up to float rounding of s), > 0 for percentile/MSE ranges.
//   Scale and zero point: per tensor, the one block's values; per channel/group,
//   the min, median (numpy's: mean of the two middle values for an even count) and
//   max over blocks. MSE, max_abs_error and SQNR come from error_metrics.h on
//   (w, fake_quantize(w)).
// The summary merges every layer's ErrorMetrics sums (a parameter-weighted
// MSE, not a mean of per-layer MSEs) and names the layer with the lowest SQNR.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/error_metrics.h"
#include "quantppl/formats/weight_format.h"
#include "quantppl/provenance.h"
#include "quantppl/quantize.h"
#include "quantppl/methods/variant_methods.h"
#include "quantppl/variant_spec.h"

namespace quantppl {

struct WeightStats {
  int64_t parameters = 0;
  double min = 0;
  double max = 0;
  double absmax = 0;
  double mean = 0;
  double stddev = 0;                    // (3)
  double kurtosis = 0;                  // (4)
  double outlier_fraction_6sigma = 0;   // (5)
};

// (1)-(5) for any float tensor (DataError naming `name` if it is empty).
WeightStats weight_stats(const torch::Tensor& w, const std::string& name = "tensor");

struct Summary3 {
  double min = 0;
  double median = 0;
  double max = 0;
};

struct VariantDamage {
  // The uniform integer grid (absmax/zeropoint) has one scale and zero point
  // per block, and (6)-(7) define its clipped fraction. Other formats
  // (formats/format_table.h) report the error metrics and blocks only: their
  // scale, zero_point and clipped_fraction fields are null.
  bool uniform_grid = true;
  int64_t blocks = 0;
  Summary3 scale;       // per tensor: min = median = max = the scale
  Summary3 zero_point;
  double clipped_fraction = 0;  // (7)
  ErrorMetrics error;           // w vs fake_quantize(w)
};

// (6)-(7) and the error metrics of fake-quantizing `w` with `config`.
VariantDamage variant_damage(const torch::Tensor& w, const QuantConfig& config, const std::string& name = "tensor");
// Any format: the uniform one as above; others error metrics and blocks only.
VariantDamage variant_damage(const torch::Tensor& w, const WeightFormat& format, const std::string& name = "tensor");

// (7) alone, for given parameters (as choose_qparams returns them for `w`).
double clipped_fraction(const torch::Tensor& w, const QParams& params, const QuantConfig& config,
                        const std::string& name = "tensor");

struct LayerInspection {
  std::string name;
  std::vector<int64_t> shape;
  WeightStats stats;
  std::optional<VariantDamage> damage;  // absent for fp32
  // What the variant's method did (methods/variant_methods.h): the relative
  // output error e = tr(dW H dW^T) / tr(W H W^T) of the method and of RTN on
  // the calibration Hessian H (when statistics are known), AWQ's alpha, HQQ's
  // iterations. Absent for fp32.
  std::optional<LayerMethodReport> method;
};

struct InspectionSummary {
  int64_t layers = 0;
  int64_t parameters = 0;
  ErrorMetrics error;                 // merged over every layer (absent values when fp32)
  double clipped_fraction = 0;        // clipped weights / parameters, over all layers
  bool clipped_known = true;          // false when a layer's format has no clipped fraction (JSON: null)
  std::string worst_layer;            // lowest SQNR ("" for fp32)
  double worst_sqnr_db = 0;
};

struct InspectionReport {
  Provenance provenance;  // model, its sha256, include/exclude, versions (provenance.h; no text)
  std::string variant;  // as the user wrote it
  bool is_fp32 = false;
  std::string method = "none";  // method_table.h's label ("none" for fp32)
  std::optional<CalibrationProvenance> calibration;
  std::vector<LayerInspection> layers;  // module-definition order
  InspectionSummary summary;
};

struct InspectOptions {
  std::string model_path;      // empty: default_model_path() (default_paths.h)
  std::string tokenizer_path;  // empty: the model's own
  Variant variant;             // e.g. parse_variant("absmax:8")
  std::string include;         // regex on Linear module names (empty: all)
  std::string exclude;         // regex (empty: none)
  // The calibration of a +gptq/+awq variant; with `calibrate_always`
  // (--calibration or --calibration-stats given) RTN and HQQ variants get
  // their e too.
  MethodRunOptions methods;
  bool calibrate_always = false;
};

using InspectProgress = std::function<void(size_t done, size_t total)>;

// Loads the model, selects layers (model_quantizer.h's select_layers) and
// inspects each; the model's weights are only read.
InspectionReport run_inspect(const InspectOptions& options, const InspectProgress& progress = {});

// Renderings. JSON: {the provenance (provenance.h: versions, "model",
// "model_sha256", "include", "exclude"), "variant",
// "layers": [{name, shape (list), parameters, min, max, absmax, std, kurtosis,
// outlier_fraction_6sigma, scale, zero_point, scale_min, scale_median,
// scale_max, zero_point_min, zero_point_median, zero_point_max, blocks,
// clipped_fraction, mse, max_abs_error, sqnr_db}], "summary": {...}}.
// scale and zero_point are the exact values per tensor and null for
// per-channel/group (see the _min/_median/_max fields). Infinite SQNR is null.
// Formats other than absmax/zeropoint have null scale, zero_point, their
// _min/_median/_max and clipped_fraction (also in the summary).
// CSV: one row per layer, same fields, shape as "512x1024", then variant and
// the provenance columns. Table: for people.
std::string format_inspection_json(const InspectionReport& report);
std::string format_inspection_csv(const InspectionReport& report);
std::string format_inspection_table(const InspectionReport& report);

}  // namespace quantppl
