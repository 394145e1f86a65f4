#include "quantppl/variant_spec.h"

#include <algorithm>

#include <fmt/format.h>

#include "quantppl/error.h"
#include "quantppl/formats/format_table.h"
#include "quantppl/formats/spec_fields.h"
#include "quantppl/formats/uniform_format.h"

namespace quantppl {

namespace {

// "a|b|c" from a table, with `spell` writing each entry as a spec does.
template <typename Table, typename Spell>
std::string spec_choices(const Table& table, Spell spell) {
  std::string out;
  for (const auto& entry : table.entries) {
    // Appended piecewise: `"|" + std::string` trips GCC 12's -Wstringop-overflow in C++20 (a
    // false positive inside basic_string::insert), and this file must build warning-free there.
    if (!out.empty()) out += '|';
    out += spell(entry);
  }
  return out;
}

std::string method_choices() {
  std::string out;
  // Appended piece by piece: `"|" + std::string(...)` trips GCC 12's -Wstringop-overflow under C++20
  // (a false positive).
  for (const MethodInfo& m : method_table()) {
    if (!out.empty()) out += '|';
    out += m.name;
    out += m.args;
  }
  return out;
}

std::string make_grammar() {
  const auto plain = [](const auto& e) { return std::string(e.name); };
  const std::string granularities = spec_choices(kGranularityNames, [](const auto& e) {
    return std::string(e.name) + (e.value == Granularity::kPerGroup ? "N" : "");
  });
  const std::string ranges = spec_choices(kRangeMethodNames, [](const auto& e) {
    return e.value == RangeMethod::kPercentile ? std::string(kPercentileSpecPrefix) + "P" : std::string(e.name);
  });
  std::string others;
  for (const FormatFamily& family : format_families()) {
    if (family.parse != parse_uniform_format) others += " | " + family.syntax;
  }
  return fmt::format(
      "fp32 | FORMAT[+METHOD[:ARG]...] with FORMAT SCHEME:BITS[:GRANULARITY[:RANGE[:ARITH]]]{} and SCHEME {}, "
      "BITS {}..{}, GRANULARITY {}, RANGE {}, ARITH {} (GRAN and RANGE of the other formats likewise; default: the first of each; e.g. absmax:8, "
      "zeropoint:4:group64, absmax:4:channel:mse, zeropoint:8:tensor:p99.9, zeropoint:8:tensor:minmax:tutorial), "
      "METHOD {}",
      others, spec_choices(kSchemeNames, plain), kMinBits, kMaxBits, granularities, ranges,
      spec_choices(kArithmeticNames, plain), method_choices());
}

}  // namespace

const std::string kVariantGrammar = make_grammar();

namespace {

[[noreturn]] void fail(const std::string& spec, const std::string& what) {
  throw UsageError(fmt::format("invalid variant '{}': {}; expected {}", spec, what, kVariantGrammar));
}

std::string trim(const std::string& s) {
  const auto begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  const auto end = s.find_last_not_of(" \t\r\n");
  return s.substr(begin, end - begin + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string::size_type start = 0;
  while (true) {
    const auto pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos == std::string::npos ? std::string::npos : pos - start));
    if (pos == std::string::npos) return parts;
    start = pos + 1;
  }
}

void set_uniform_config(Variant& variant) {
  if (const auto* uniform = dynamic_cast<const UniformFormat*>(variant.format.get())) variant.config = uniform->config();
}

MethodSpec parse_method(const std::string& spec, const std::string& text) {
  const std::vector<std::string> fields = split(text, ':');
  const auto it = std::find_if(method_table().begin(), method_table().end(),
                               [&](const MethodInfo& m) { return m.name == fields[0]; });
  if (it == method_table().end()) {
    std::string known;
    for (const MethodInfo& m : method_table()) known += (known.empty() ? "" : ", ") + std::string(m.name);
    fail(spec, fmt::format("unknown method '{}' (known methods: {})", fields[0], known));
  }
  const int args = static_cast<int>(fields.size()) - 1;
  if (args < it->min_args || args > it->max_args) {
    fail(spec, it->max_args == 0 ? fmt::format("method '{}' takes no argument, got {}", it->name, args)
                                 : fmt::format("method '{}' takes {} to {} ':'-separated arguments ({}), got {}", it->name,
                                               it->min_args, it->max_args, it->args, args));
  }
  for (const std::string& arg : fields) {
    if (arg.empty()) fail(spec, fmt::format("method '{}' has an empty argument", it->name));
  }
  return {fields[0], std::vector<std::string>(fields.begin() + 1, fields.end())};
}

}  // namespace

std::string variant_help_table() {
  std::string out =
      "Variants: fp32 | FORMAT[+METHOD[:ARG]...]  (GRAN tensor|channel|groupN, RANGE minmax|pP|mse, ARITH "
      "numpy|tutorial; bits per weight = all stored bits of codes and scales over the weights; G = inputs per "
      "block: N for groupN, in_features per channel, all weights per tensor)\n";
  out += format_table_text();
  out += "Methods: FORMAT+METHOD (+gptq and +awq read calibration statistics: --calibration, --calibration-stats)\n";
  for (const MethodInfo& m : method_table()) {
    out += fmt::format("  +{}{}: {}\n", m.name, m.args, m.meaning);
  }
  return out;
}

Variant make_variant(std::shared_ptr<const WeightFormat> format) {
  Variant variant;
  variant.name = format->spec();
  variant.format = std::move(format);
  set_uniform_config(variant);
  return variant;
}

Variant make_variant(const QuantConfig& config) { return make_variant(std::make_shared<UniformFormat>(config)); }

Variant parse_variant(const std::string& raw_spec) {
  const std::string spec = trim(raw_spec);
  Variant variant;
  variant.name = spec;
  if (spec.empty()) fail(spec, "empty variant");
  if (spec == "fp32") {
    variant.is_fp32 = true;
    return variant;
  }
  const std::vector<std::string> pieces = split(spec, '+');
  if (pieces[0] == "fp32") fail(spec, "fp32 takes no method");
  try {
    variant.format = parse_format(pieces[0]);
  } catch (const UsageError& e) {
    fail(spec, e.what());
  }
  for (size_t i = 1; i < pieces.size(); ++i) {
    if (pieces[i].empty()) fail(spec, "empty method after '+'");
    MethodSpec method = parse_method(spec, pieces[i]);
    const auto info = std::find_if(method_table().begin(), method_table().end(),
                                   [&](const MethodInfo& m) { return m.name == method.name; });
    if (!info->no_op) variant.methods.push_back(std::move(method));
  }
  variant.method = resolve_methods(spec, variant.methods);
  if (variant.method == MethodKind::kHqq) {
    // HQQ sets a zero point: the format must have one it can set (weight_format.h, zero_point_grid).
    const ZeroPointGrid* grid = nullptr;
    try {
      grid = variant.format->zero_point_grid();
    } catch (const UsageError& e) {
      fail(spec, e.what());
    }
    if (grid == nullptr) {
      fail(spec, fmt::format("hqq applies to zero-point grids (zeropoint:B:..., q4_1, q5_1), not '{}'",
                             variant.format->spec()));
    }
  }
  set_uniform_config(variant);
  return variant;
}

std::vector<Variant> parse_variant_list(const std::string& specs) {
  if (trim(specs).empty()) throw UsageError(fmt::format("empty variant list; expected a comma-separated list of {}", kVariantGrammar));
  std::vector<Variant> variants;
  for (const std::string& item : split(specs, ',')) {
    if (trim(item).empty()) throw UsageError(fmt::format("empty item in variant list '{}'", specs));
    variants.push_back(parse_variant(item));
  }
  return variants;
}

std::string canonical_spec(const Variant& variant) {
  if (variant.is_fp32) return "fp32";
  if (!variant.format) throw UsageError(fmt::format("variant '{}' has no format", variant.name));
  std::string spec;
  try {
    spec = variant.format->spec();
  } catch (const UsageError& e) {
    throw UsageError(fmt::format("variant '{}': {}", variant.name, e.what()));
  }
  for (const MethodSpec& m : variant.methods) {
    spec += "+" + m.name;
    for (const std::string& arg : m.args) spec += ":" + arg;
  }
  return spec;
}

}  // namespace quantppl
