#include "quantppl/formats/format_table.h"

#include <algorithm>

#include <fmt/format.h>

#include "quantppl/error.h"
#include "quantppl/formats/gguf_blocks.h"
#include "quantppl/formats/mx_format.h"
#include "quantppl/formats/nvfp4_format.h"
#include "quantppl/formats/scaled_element_format.h"
#include "quantppl/formats/spec_fields.h"
#include "quantppl/formats/uniform_format.h"
#include "quantppl/quantize.h"

namespace quantppl {
namespace {

// The issue-14 families parse the whole spec text (formats/*.h); the table
// hands them its fields.
std::string join_fields(const std::vector<std::string>& fields) {
  std::string spec;
  for (const std::string& f : fields) spec += (spec.empty() ? "" : ":") + f;
  return spec;
}
std::shared_ptr<const WeightFormat> parse_scaled_element_row(const std::vector<std::string>& fields) {
  return formats::parse_scaled_element_format(join_fields(fields));
}
std::shared_ptr<const WeightFormat> parse_mx_row(const std::vector<std::string>& fields) {
  return formats::parse_mx_format(join_fields(fields));
}
std::shared_ptr<const WeightFormat> parse_nvfp4_row(const std::vector<std::string>& fields) {
  return formats::parse_nvfp4_format(join_fields(fields));
}
std::shared_ptr<const WeightFormat> parse_gguf_row(const std::vector<std::string>& fields) {
  return formats::parse_gguf_format(join_fields(fields));
}

}  // namespace

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
      {{"nf4"},
       "nf4[:GRAN[:RANGE]]",
       "QLoRA NormalFloat-4: 16 fixed values in [-1, 1] times s = block absmax (nearest, ties to the lower)",
       "4 + 32/G (an f32 scale a block)",
       parse_scaled_element_row,
       {"nf4", "nf4:group64", "nf4:channel:mse", "nf4:group32:p99.9"}},
      {{"fp4", "fp8e4m3", "fp8e5m2"},
       "fp4|fp8e4m3|fp8e5m2[:GRAN[:RANGE]]",
       "FP4 E2M1 / OCP FP8 E4M3 (max 448) / E5M2 (max 57344) times s = block absmax / max (nearest even, saturating)",
       "4 or 8 + 32/G (an f32 scale a block)",
       parse_scaled_element_row,
       {"fp4:group32", "fp8e4m3:channel", "fp8e5m2", "fp4:group64:mse"}},
      {{"mxfp4", "mxfp6e2m3", "mxfp6e3m2", "mxfp8e4m3", "mxfp8e5m2", "mxint8"},
       "mxfp4|mxfp6e2m3|mxfp6e3m2|mxfp8e4m3|mxfp8e5m2|mxint8",
       "OCP Microscaling v1.0: 32 elements share an E8M0 scale 2^(floor(log2 amax) - emax_elem)",
       "4.25 | 6.25 | 6.25 | 8.25 | 8.25 | 8.25",
       parse_mx_row,
       {"mxfp4", "mxfp6e2m3", "mxfp6e3m2", "mxfp8e4m3", "mxfp8e5m2", "mxint8"}},
      {{"nvfp4"},
       "nvfp4",
       "NVIDIA NVFP4: 16 E2M1 elements, an E4M3 block scale, one f32 tensor scale amax/(6*448)",
       "4.5 + 32/numel",
       parse_nvfp4_row,
       {"nvfp4"}},
      {{"q8_0", "q4_0", "q4_1", "q5_0", "q5_1"},
       "q8_0|q4_0|q4_1|q5_0|q5_1",
       "llama.cpp GGUF blocks of 32, as ggml's reference quantizers: f16 scale d (and f16 min for q*_1)",
       "8.5 | 4.5 | 5.0 | 5.5 | 6.0",
       parse_gguf_row,
       {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}},
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
