#include "quantppl/formats/format_table.h"

#include <algorithm>

#include <fmt/format.h>

#include "quantppl/error.h"
#include "quantppl/formats/spec_fields.h"
#include "quantppl/formats/uniform_format.h"
#include "quantppl/quantize.h"

namespace quantppl {

const std::vector<FormatFamily>& format_families() {
  // One row per family; see format_table.h for how to add one.
  static const std::vector<FormatFamily> table = {
      {{"absmax"},
       "absmax:BITS[:GRAN[:RANGE[:ARITH]]]",
       "symmetric integer grid: s = max|x| / (2^(b-1) - 1), codes +-(2^(b-1) - 1), no zero point",
       "BITS + 32/G (an f32 scale a block)",
       parse_uniform_format,
       {"absmax:8", "absmax:4:group64", "absmax:4:channel:mse", "absmax:3:group32:p99.9:tutorial"}},
      {{"zeropoint"},
       "zeropoint:BITS[:GRAN[:RANGE[:ARITH]]]",
       "asymmetric integer grid: s = (max - min) / (2^b - 1), integer zero point z",
       "BITS + 48/G (f32 scale, i16 zero point)",
       parse_uniform_format,
       {"zeropoint:8", "zeropoint:4:group64", "zeropoint:2:channel:mse:tutorial", "zeropoint:5:group128:p99"}},
  };
  return table;
}

const FormatFamily* find_format_family(const std::string& name) {
  for (const FormatFamily& family : format_families()) {
    if (std::find(family.names.begin(), family.names.end(), name) != family.names.end()) return &family;
  }
  return nullptr;
}

std::string format_family_names() {
  std::string out;
  for (const FormatFamily& family : format_families()) {
    for (const std::string& name : family.names) out += (out.empty() ? "" : "|") + name;
  }
  return out;
}

std::shared_ptr<const WeightFormat> parse_format(const std::string& spec) {
  const std::vector<std::string> fields = split_spec_fields(spec);
  const FormatFamily* family = find_format_family(fields[0]);
  if (family == nullptr) {
    // Worded for the integer schemes first: most specs are absmax/zeropoint ones with a typo.
    throw UsageError(fmt::format("unknown scheme '{}' (expected {}) or format family (expected one of {})", fields[0],
                                 kSchemeNames.choices_in_words(), format_family_names()));
  }
  return family->parse(fields);
}

std::string format_table_text() {
  size_t syntax_width = std::string("FORMAT").size();
  size_t bits_width = std::string("BITS PER WEIGHT").size();
  for (const FormatFamily& f : format_families()) {
    syntax_width = std::max(syntax_width, f.syntax.size());
    bits_width = std::max(bits_width, f.bits_per_weight.size());
  }
  std::string out = fmt::format("{:<{}}  {:<{}}  {}\n", "FORMAT", syntax_width, "BITS PER WEIGHT", bits_width, "MEANING");
  for (const FormatFamily& f : format_families()) {
    out += fmt::format("{:<{}}  {:<{}}  {}\n", f.syntax, syntax_width, f.bits_per_weight, bits_width, f.meaning);
  }
  return out;
}

}  // namespace quantppl
