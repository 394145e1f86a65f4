#include "quantppl/formats/spec_fields.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include <fmt/format.h>

#include "quantppl/error.h"

namespace quantppl {
namespace {

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

GranularityField parse_granularity_field(const std::string& g) {
  GranularityField out;
  const std::string group(kGranularityNames.name(Granularity::kPerGroup));
  if (g.size() > group.size() && g.compare(0, group.size(), group) == 0) {
    const std::string n = g.substr(group.size());
    if (!all_digits(n) || n.size() > 9 || std::stoll(n) == 0) {
      throw UsageError(fmt::format("group size must be a positive integer (e.g. group64), got '{}'", g));
    }
    out.granularity = Granularity::kPerGroup;
    out.group_size = std::stoll(n);
    return out;
  }
  if (g == group) throw UsageError(fmt::format("group size must be a positive integer (e.g. group64), got '{}'", g));
  const auto value = kGranularityNames.find(g);
  if (!value) {
    throw UsageError(fmt::format("unknown {} '{}' (expected {})", kGranularityNames.what, g,
                                 kGranularityNames.choices_in_words()));
  }
  out.granularity = *value;
  return out;
}

RangeField parse_range_field(const std::string& r) {
  RangeField out;
  const std::string prefix(kPercentileSpecPrefix);
  if (r.size() > prefix.size() && r.compare(0, prefix.size(), prefix) == 0 && !kRangeMethodNames.find(r)) {
    double p = 0;
    if (!parse_decimal(r.substr(prefix.size()), &p) || !(p > 0.0 && p <= 100.0)) {
      throw UsageError(fmt::format("percentile must be a number in (0, 100] (e.g. p99.9), got '{}'", r));
    }
    out.range = RangeMethod::kPercentile;
    out.percentile = p;
    return out;
  }
  if (r == kRangeMethodNames.name(RangeMethod::kPercentile)) {
    throw UsageError(fmt::format("a percentile range is written p followed by P in (0, 100] (e.g. p99.9), got '{}'", r));
  }
  const auto value = kRangeMethodNames.find(r);
  if (!value) {
    throw UsageError(fmt::format("unknown {} '{}' (expected {})", kRangeMethodNames.what, r,
                                 kRangeMethodNames.choices_in_words()));
  }
  out.range = *value;
  return out;
}

std::vector<std::string> split_spec_fields(const std::string& s) {
  std::vector<std::string> parts;
  std::string::size_type start = 0;
  while (true) {
    const auto pos = s.find(':', start);
    parts.push_back(s.substr(start, pos == std::string::npos ? std::string::npos : pos - start));
    if (pos == std::string::npos) return parts;
    start = pos + 1;
  }
}

}  // namespace quantppl
