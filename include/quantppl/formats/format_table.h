// THE table of weight-format families: the one place that maps the spec text
// a user writes (the FORMAT part of a variant, variant_spec.h) to a
// WeightFormat (formats/weight_format.h), and that says, for --help, the
// README and docs, what each family means and what it costs in bits.
//
// Adding a format = one math file (include/quantppl/formats/<family>.h +
// src/formats/<family>.cpp: a WeightFormat and a parser
//   std::shared_ptr<const WeightFormat> parse_<family>(const std::vector<std::string>& fields);
// ) plus ONE row in format_families() in src/formats/format_table.cpp:
//
//   {{"nf4"}, "nf4[:GRAN[:RANGE]]", "QLoRA NormalFloat-4: 16 normal quantiles x block absmax",
//    "4 + 32/G (an f32 absmax a block)", parse_nf4, {"nf4:group64", "nf4:channel"}},
//
// The row's names are the spec's first ':'-field; the parser gets every
// field (fields[0] is the name) and throws UsageError saying what is wrong
// (parse_variant adds the spec and the grammar). GRAN and RANGE fields are
// parsed by formats/spec_fields.h. The examples are real specs of the family:
// the generic tests (pack/unpack round trip, spec round trip) and the
// benchmark (bench/quantize_bench.cpp) run every one, so a new row is tested
// and benchmarked without further edits.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "quantppl/formats/weight_format.h"

namespace quantppl {

using FormatParser = std::shared_ptr<const WeightFormat> (*)(const std::vector<std::string>& fields);

struct FormatFamily {
  std::vector<std::string> names;  // the spec's first field, e.g. {"absmax"}, {"mxfp4"}
  std::string syntax;              // e.g. "absmax:BITS[:GRAN[:RANGE[:ARITH]]]"
  std::string meaning;             // one line
  std::string bits_per_weight;     // short, e.g. "BITS + 32/G (an f32 scale a block)", "4.25"
  FormatParser parse;
  std::vector<std::string> examples;  // at least one spec of this family
};

// Every family, in the order --help lists them.
const std::vector<FormatFamily>& format_families();

// The family whose names hold `name`, or nullptr.
const FormatFamily* find_format_family(const std::string& name);

// Parses a FORMAT spec (no "+METHOD"): UsageError saying what is wrong
// (an unknown family lists the known names).
std::shared_ptr<const WeightFormat> parse_format(const std::string& spec);

// "absmax|zeropoint|nf4|..." : every family name.
std::string format_family_names();

// The table for --help, the README and docs: one line per family,
// "SYNTAX  BITS PER WEIGHT  MEANING", columns aligned, with a header line.
std::string format_table_text();

}  // namespace quantppl
