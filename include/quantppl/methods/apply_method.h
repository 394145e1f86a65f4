// Applying one method (RTN, GPTQ, AWQ, HQQ, AWQ+GPTQ) to every selected Linear
// layer of a model: the one place that knows which method needs which
// statistics and that AWQ scales the layers sharing an input together. The
// variant-spec glue (methods/method_table.h rows) builds a MethodChoice; compare,
// quantize, inspect and sensitivity call apply_method.
//
// Per layer the result is the quantized weight W_hat and, where calibration
// statistics are given, the relative output error e of gptq.h (2) for the
// method and for round to nearest, so that `inspect` can show them side by
// side; AWQ's chosen alpha; HQQ's iteration count.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/formats/weight_format.h"
#include "quantppl/methods/awq.h"
#include "quantppl/methods/calibration_stats.h"
#include "quantppl/methods/gptq.h"
#include "quantppl/methods/hqq.h"
#include "quantppl/methods/method_table.h"

namespace quantppl {

struct MethodChoice {
  MethodKind kind = MethodKind::kRtn;
  GptqOptions gptq;  // kGptq, kAwqGptq (act_order: "+gptq:actorder")
  AwqOptions awq;    // kAwq, kAwqGptq
  HqqOptions hqq;    // kHqq (on the format's zero-point grid: WeightFormat::zero_point_grid)
};


struct LayerToQuantize {
  std::string name;
  torch::Tensor weight;                         // float32 [out, in], not modified
  const LayerActivationStats* stats = nullptr;  // required when method_needs_calibration
};

struct LayerMethodResult {
  torch::Tensor weight;  // W_hat, float32 [out, in]
  // What a deployed model stores (method_weight.h): W_hat = format_weight /
  // input_scales (AWQ, AWQ+GPTQ), or W_hat = format_weight (input_scales
  // undefined). format_weight lies on the format's grid.
  torch::Tensor format_weight;
  torch::Tensor input_scales;
  // GPTQ, AWQ+GPTQ: gptq.h's parameter_source (in format_weight's domain);
  // undefined: the format's own parameters of format_weight's source (RTN:
  // W; AWQ: W diag(s)).
  torch::Tensor parameter_source;
  torch::Tensor group_whole;  // gptq.h's group_whole, with parameter_source
  // HQQ: the format's own PreparedWeight with HQQ's parameters (hqq_prepare),
  // which stores them (float zero points) and gives `weight`.
  std::unique_ptr<PreparedWeight> prepared;
  // e of the method and of round to nearest on the same H (NaN without statistics).
  double relative_error = std::numeric_limits<double>::quiet_NaN();
  double rtn_relative_error = std::numeric_limits<double>::quiet_NaN();
  double awq_alpha = std::numeric_limits<double>::quiet_NaN();  // AWQ, AWQ+GPTQ
  int hqq_iterations = 0;                                      // HQQ
};

// W_hat for every layer, in `layers` order. AWQ (and AWQ+GPTQ) search one
// scale per shared_input group of the statistics (a layer with
// shared_input < 0 is its own group). UsageError when a calibrated method has
// a layer without statistics (naming it); the methods' own errors otherwise.
std::vector<LayerMethodResult> apply_method(const std::vector<LayerToQuantize>& layers, const WeightFormat& format,
                                            const MethodChoice& method);

}  // namespace quantppl
