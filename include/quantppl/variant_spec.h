// Variant specs: the text a user writes to name one way of quantizing a model.
//
//   VARIANT     = "fp32" | SCHEME ":" BITS [":" GRANULARITY [":" RANGE]]
//   SCHEME      = "absmax" | "zeropoint"
//   BITS        = an integer in [2, 8]
//   GRANULARITY = "tensor" (default) | "channel" | "group" N      (N > 0, e.g. group128)
//   RANGE       = "minmax" (default) | "p" P (0 < P <= 100, e.g. p99.99) | "mse"
//
// Examples: fp32, absmax:8, zeropoint:4:group64, absmax:4:channel:mse,
// zeropoint:8:tensor:p99.9. A list is comma-separated: "fp32,absmax:8,zeropoint:8".
// Every variant quantizes with the library's default arithmetic (the numpy
// seed's: step scale, unsigned zero-point codes; see quantize.h).
#pragma once

#include <string>
#include <vector>

#include "quantppl/quantize.h"

namespace quantppl {

struct Variant {
  std::string name;  // the spec as the user wrote it (trimmed): the label in every report
  bool is_fp32 = false;
  QuantConfig config;  // meaningless when is_fp32
};

// The grammar above, for error messages and --help.
extern const char* const kVariantGrammar;

// Throws UsageError naming the spec, what is wrong, and the grammar.
Variant parse_variant(const std::string& spec);

// Comma-separated list; empty items and an empty list are errors.
std::vector<Variant> parse_variant_list(const std::string& specs);

// The canonical spelling with every field explicit, e.g. "absmax:8:tensor:minmax".
std::string canonical_spec(const Variant& variant);

}  // namespace quantppl
