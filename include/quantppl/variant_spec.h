// Variant specs: the text a user writes to name one way of quantizing a model.
//
//   VARIANT = "fp32" | FORMAT ("+" METHOD [":" ARG]...)*
//   FORMAT  = a spec of one family of formats/format_table.h, e.g. the
//             uniform integer grids
//               SCHEME ":" BITS [":" GRANULARITY [":" RANGE [":" ARITH]]]
//               SCHEME      = "absmax" | "zeropoint"
//               BITS        = an integer in [2, 8]
//               GRANULARITY = "tensor" (default) | "channel" | "group" N  (N > 0, e.g. group128)
//               RANGE       = "minmax" (default) | "p" P (0 < P <= 100, e.g. p99.99) | "mse"
//               ARITH       = "numpy" (default) | "tutorial"
//   METHOD  = a row of methods/method_table.h ("rtn": round to nearest, the default)
//
// Examples: fp32, absmax:8, zeropoint:4:group64, absmax:4:channel:mse,
// zeropoint:8:tensor:p99.9, zeropoint:8:tensor:minmax:tutorial, absmax:4+rtn.
// A list is comma-separated: "fp32,absmax:8,zeropoint:8".
// ARITH picks the arithmetic (quantize.h, Arithmetic): numpy is the numpy
// seed's (step scale, unsigned zero-point codes); tutorial is the torch
// tutorial's absmax_quantize / zeropoint_quantize (inverse scale, signed
// codes) at any bit width. The names come from quantize.h's tables.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "quantppl/formats/weight_format.h"
#include "quantppl/methods/method_table.h"
#include "quantppl/quantize.h"

namespace quantppl {

struct Variant {
  std::string name;  // the spec as the user wrote it (trimmed): the label in every report
  bool is_fp32 = false;
  std::shared_ptr<const WeightFormat> format;  // null when is_fp32
  std::vector<MethodSpec> methods;             // in spec order; no-op methods (rtn) dropped
  MethodKind method = MethodKind::kRtn;        // what `methods` amount to (resolve_methods)
  // The uniform format's config (formats/uniform_format.h) when the format is
  // absmax/zeropoint, for the callers that need the integer grid itself (the
  // seeds' tests); default otherwise. Every generic path uses `format`.
  QuantConfig config;
};

// A variant of one format, no method (name = the format's spec).
Variant make_variant(std::shared_ptr<const WeightFormat> format);
// The uniform-grid variant of `config` (UsageError if validate() rejects it).
Variant make_variant(const QuantConfig& config);

// The grammar above with the tables' names, for error messages and --help.
extern const std::string kVariantGrammar;

// For --help and the README: every format family of formats/format_table.h
// with its bits per weight and meaning, then every method of
// methods/method_table.h, generated from the tables.
std::string variant_help_table();

// Throws UsageError naming the spec, what is wrong, and the grammar.
Variant parse_variant(const std::string& spec);

// Comma-separated list; empty items and an empty list are errors.
std::vector<Variant> parse_variant_list(const std::string& specs);

// The canonical spelling: "fp32", or the format's canonical spec (every field
// explicit: "absmax:8:tensor:minmax", "zeropoint:4:channel:mse:tutorial")
// followed by each method as "+NAME[:ARG]...".
std::string canonical_spec(const Variant& variant);

}  // namespace quantppl
