// What calibration learns about the input x (one token position's
// in_features-vector) of every Linear layer, over N calibration token
// positions: the statistics GPTQ (the Hessian H), AWQ (mean |x_j|) and
// llama.cpp-style importance weighting need. Written by activation capture
// (methods/activation_capture.h), stored by `quantppl calibrate --output`,
// read back by `--calibration-stats`.
//
//   H        = (2/N) * sum_n x_n x_n^T          [in, in], symmetric
//   mean_abs = (1/N) * sum_n |x_n|              [in]  (elementwise)
//   max_abs  = max_n |x_n|                      [in]
//
// Sums are accumulated batch by batch (never all activations at once).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

namespace quantppl {

struct LayerActivationStats {
  std::string name;          // the Linear layer's module path, as LinearLayer::name
  int64_t in_features = 0;
  int64_t tokens = 0;        // N, the token positions this layer saw
  torch::Tensor hessian;     // float32 or float64 [in, in] (the capture states its precision)
  torch::Tensor mean_abs;    // [in]
  torch::Tensor max_abs;     // [in]
  // Layers that read the very same tensor (q, k, v of one attention; wi_0 and
  // wi_1 of one feed-forward; the cross-attention k and v that read the
  // encoder output) share this id; AWQ scales them together.
  int64_t shared_input = -1;
};

struct CalibrationStats {
  std::string model_sha256;  // of the contract model file the statistics came from
  std::string text_path;
  std::string text_sha256;
  int64_t tokens = 0;        // calibration token positions fed to the model
  std::vector<LayerActivationStats> layers;
};

}  // namespace quantppl
