// Variant specs: the text a user writes to name one way of quantizing a model.
//
//   VARIANT     = "fp32" | SCHEME ":" BITS [":" GRANULARITY [":" RANGE [":" ARITH]]]
//   SCHEME      = "absmax" | "zeropoint"
//   BITS        = an integer in [2, 8]
//   GRANULARITY = "tensor" (default) | "channel" | "group" N      (N > 0, e.g. group128)
//   RANGE       = "minmax" (default) | "p" P (0 < P <= 100, e.g. p99.99) | "mse"
//   ARITH       = "numpy" (default) | "tutorial"
//
// Examples: fp32, absmax:8, zeropoint:4:group64, absmax:4:channel:mse,
// zeropoint:8:tensor:p99.9, zeropoint:8:tensor:minmax:tutorial. A list is
// comma-separated: "fp32,absmax:8,zeropoint:8".
// ARITH picks the arithmetic (quantize.h, Arithmetic): numpy is the numpy
// seed's (step scale, unsigned zero-point codes); tutorial is the torch
// tutorial's absmax_quantize / zeropoint_quantize (inverse scale, signed
// codes) at any bit width. The names come from quantize.h's tables.
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

// The grammar above with the tables' names, for error messages and --help.
extern const std::string kVariantGrammar;

// Throws UsageError naming the spec, what is wrong, and the grammar.
Variant parse_variant(const std::string& spec);

// Comma-separated list; empty items and an empty list are errors.
std::vector<Variant> parse_variant_list(const std::string& specs);

// The canonical spelling: every field explicit up to RANGE, and ARITH only
// when it is not the default, e.g. "absmax:8:tensor:minmax",
// "zeropoint:4:channel:mse:tutorial". UsageError for a config whose
// scale form and zero-point codes no ARITH names (quantize.h, arithmetic_of).
std::string canonical_spec(const Variant& variant);

}  // namespace quantppl
