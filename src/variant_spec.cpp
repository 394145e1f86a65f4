#include "quantppl/variant_spec.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>

#include <fmt/format.h>

#include "quantppl/error.h"

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

std::string make_grammar() {
  const auto plain = [](const auto& e) { return std::string(e.name); };
  const std::string granularities = spec_choices(kGranularityNames, [](const auto& e) {
    return std::string(e.name) + (e.value == Granularity::kPerGroup ? "N" : "");
  });
  const std::string ranges = spec_choices(kRangeMethodNames, [](const auto& e) {
    return e.value == RangeMethod::kPercentile ? std::string(kPercentileSpecPrefix) + "P" : std::string(e.name);
  });
  return fmt::format(
      "fp32 | SCHEME:BITS[:GRANULARITY[:RANGE[:ARITH]]] with SCHEME {}, BITS {}..{}, GRANULARITY {}, RANGE {}, "
      "ARITH {} (default: the first of each; e.g. absmax:8, zeropoint:4:group64, absmax:4:channel:mse, "
      "zeropoint:8:tensor:p99.9, zeropoint:8:tensor:minmax:tutorial)",
      spec_choices(kSchemeNames, plain), kMinBits, kMaxBits, granularities, ranges,
      spec_choices(kArithmeticNames, plain));
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

bool all_digits(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// A plain decimal number: digits with at most one '.', no sign, exponent or spaces.
bool parse_decimal(const std::string& s, double* out) {
  if (s.empty() || s.find_first_not_of("0123456789.") != std::string::npos) return false;
  if (s.find('.') != s.rfind('.') || s == ".") return false;
  errno = 0;
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  return errno == 0 && end == s.c_str() + s.size() && std::isfinite(*out);
}

}  // namespace

Variant parse_variant(const std::string& raw_spec) {
  const std::string spec = trim(raw_spec);
  Variant variant;
  variant.name = spec;
  if (spec.empty()) fail(spec, "empty variant");
  if (spec == "fp32") {
    variant.is_fp32 = true;
    return variant;
  }
  const std::vector<std::string> parts = split(spec, ':');
  if (parts.size() < 2 || parts.size() > 5) fail(spec, fmt::format("expected 2 to 5 ':'-separated fields, got {}", parts.size()));

  QuantConfig& config = variant.config;
  const auto field = [&](const auto& table, const std::string& name) {
    const auto value = table.find(name);
    if (!value) fail(spec, fmt::format("unknown {} '{}' (expected {})", table.what, name, table.choices_in_words()));
    return *value;
  };
  config.scheme = field(kSchemeNames, parts[0]);

  if (!all_digits(parts[1]) || parts[1].size() > 2) fail(spec, fmt::format("bits must be an integer in [2, 8], got '{}'", parts[1]));
  config.bits = std::stoi(parts[1]);
  if (config.bits < kMinBits || config.bits > kMaxBits) fail(spec, fmt::format("bits must be an integer in [2, 8], got '{}'", parts[1]));

  if (parts.size() >= 3) {
    const std::string& g = parts[2];
    const std::string group(kGranularityNames.name(Granularity::kPerGroup));
    if (g.size() > group.size() && g.compare(0, group.size(), group) == 0) {
      const std::string n = g.substr(group.size());
      if (!all_digits(n) || n.size() > 9 || std::stoll(n) == 0) {
        fail(spec, fmt::format("group size must be a positive integer (e.g. group64), got '{}'", g));
      }
      config.granularity = Granularity::kPerGroup;
      config.group_size = std::stoll(n);
    } else if (g == group) {
      fail(spec, fmt::format("group size must be a positive integer (e.g. group64), got '{}'", g));
    } else {
      config.granularity = field(kGranularityNames, g);
    }
  }

  if (parts.size() >= 4) {
    const std::string& r = parts[3];
    const std::string prefix(kPercentileSpecPrefix);
    if (r.size() > prefix.size() && r.compare(0, prefix.size(), prefix) == 0 && !kRangeMethodNames.find(r)) {
      double p = 0;
      if (!parse_decimal(r.substr(prefix.size()), &p) || !(p > 0.0 && p <= 100.0)) {
        fail(spec, fmt::format("percentile must be a number in (0, 100] (e.g. p99.9), got '{}'", r));
      }
      config.range = RangeMethod::kPercentile;
      config.percentile = p;
    } else if (r == kRangeMethodNames.name(RangeMethod::kPercentile)) {
      fail(spec, fmt::format("a percentile range is written p followed by P in (0, 100] (e.g. p99.9), got '{}'", r));
    } else {
      config.range = field(kRangeMethodNames, r);
    }
  }

  if (parts.size() == 5) set_arithmetic(config, field(kArithmeticNames, parts[4]));
  validate(config);
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
  const QuantConfig& c = variant.config;
  const std::optional<Arithmetic> arithmetic = arithmetic_of(c);
  if (!arithmetic) {
    throw UsageError(fmt::format("variant '{}': scale form {} with {} zero-point codes has no spec spelling "
                                 "(ARITH {})", variant.name, kScaleFormNames.name(c.scale_form),
                                 kZeroPointCodesNames.name(c.zero_point_codes), kArithmeticNames.described()));
  }
  std::string spec = fmt::format("{}:{}:{}:{}", to_string(c.scheme), c.bits, to_string(c.granularity, c.group_size),
                                 to_string(c.range, c.percentile));
  if (*arithmetic != Arithmetic::kNumpy) {
    spec += ':';
    spec += kArithmeticNames.name(*arithmetic);
  }
  return spec;
}

}  // namespace quantppl
