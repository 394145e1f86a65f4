// The spec fields several format families share, parsed one way everywhere:
//
//   GRAN  = "tensor" | "channel" | "group" N    (N > 0, e.g. group64)
//   RANGE = "minmax" | "p" P (0 < P <= 100, e.g. p99.9) | "mse"
//
// (quantize.h's tables hold the names.) Each throws UsageError saying what is
// wrong with the field; parse_variant (variant_spec.h) adds the spec and the
// grammar to the message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quantppl/quantize.h"

namespace quantppl {

struct GranularityField {
  Granularity granularity = Granularity::kPerTensor;
  int64_t group_size = 0;  // kPerGroup only
};
GranularityField parse_granularity_field(const std::string& field);

struct RangeField {
  RangeMethod range = RangeMethod::kMinMax;
  double percentile = 99.99;  // kPercentile only
};
RangeField parse_range_field(const std::string& field);

// A spec split at ':' (empty fields kept, so "nf4::x" is caught as an empty field).
std::vector<std::string> split_spec_fields(const std::string& spec);

}  // namespace quantppl
