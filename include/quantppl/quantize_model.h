// `quantppl quantize`: write a contract model whose selected Linear weights
// hold their quantize-dequantize values.
//
// The output is an ordinary contract model (docs/model-contract.md): the same
// scripted module with fake-quantized float32 weights, the same tokenizer, and
// quantppl.json with an added "variant" field naming the spec. Evaluating it
// with `compare --variants fp32` therefore gives exactly the perplexity of
// `compare --variants SPEC` on the original. Written atomically.
#pragma once

#include <cstdint>
#include <string>

#include "quantppl/methods/variant_methods.h"
#include "quantppl/variant_spec.h"

namespace quantppl {

struct QuantizeModelOptions {
  std::string model_path;  // empty: default model
  std::string tokenizer_path;
  Variant variant;
  std::string output_path;
  std::string include;
  std::string exclude;
  bool force = false;
  MethodRunOptions methods;  // the calibration of a +gptq/+awq variant
};

struct QuantizeModelSummary {
  int64_t layers = 0;
  int64_t parameters = 0;
  double weight_mse = 0;
  double weight_sqnr_db = 0;
  // What the quantized layers take at the format's real width (as `compare`
  // reports them): packed_bytes, and bits_per_weight = 8 * packed_bytes / parameters.
  int64_t packed_bytes = 0;
  double bits_per_weight = 0;
};

QuantizeModelSummary quantize_model_file(const QuantizeModelOptions& options);

}  // namespace quantppl
