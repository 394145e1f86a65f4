#include "quantppl/regression_check.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "quantppl/error.h"
#include "quantppl/input_file.h"
#include "quantppl/variant_spec.h"

namespace quantppl {

ExpectedRun read_expected_run(const std::string& path) {
  // A regular file of at most kMaxCheckFileBytes (input_file.h): --check /dev/zero read forever.
  const std::string text = read_input_file(path, kCheckFileInput);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt::format("--check: '{}' is not valid JSON ({})", path, e.what()));
  }
  if (!j.is_object()) throw DataError(fmt::format("--check: '{}' must hold a JSON object", path));
  double default_tolerance = kDefaultTolerancePct;
  if (j.contains("tolerance_pct")) {
    if (!j["tolerance_pct"].is_number() || j["tolerance_pct"].get<double>() < 0) {
      throw DataError(fmt::format("--check: '{}': tolerance_pct must be a non-negative number", path));
    }
    default_tolerance = j["tolerance_pct"].get<double>();
  }
  const char* list_key = j.contains("variants") ? "variants" : "results";
  if (!j.contains(list_key) || !j[list_key].is_array() || j[list_key].empty()) {
    throw DataError(fmt::format("--check: '{}' needs a non-empty array \"variants\" of {{variant, ppl}}", path));
  }
  std::vector<ExpectedPerplexity> expected;
  for (const auto& item : j[list_key]) {
    if (!item.is_object() || !item.contains("variant") || !item["variant"].is_string() || !item.contains("ppl") ||
        !item["ppl"].is_number() || !(item["ppl"].get<double>() > 0)) {
      throw DataError(fmt::format("--check: '{}': every entry needs \"variant\" (string) and \"ppl\" (> 0), got {}",
                                  path, item.dump()));
    }
    double tolerance = default_tolerance;
    if (item.contains("tolerance_pct")) {
      if (!item["tolerance_pct"].is_number() || item["tolerance_pct"].get<double>() < 0) {
        throw DataError(fmt::format("--check: '{}': tolerance_pct of {} must be a non-negative number", path,
                                    item["variant"].get<std::string>()));
      }
      tolerance = item["tolerance_pct"].get<double>();
    }
    expected.push_back({item["variant"].get<std::string>(), item["ppl"].get<double>(), tolerance});
  }
  ExpectedRun run;
  run.variants = std::move(expected);
  for (const char* key : {"model_sha256", "text_sha256"}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_string()) throw DataError(fmt::format("--check: '{}': {} must be a string", path, key));
    (std::string(key) == "model_sha256" ? run.model_sha256 : run.text_sha256) = j[key].get<std::string>();
  }
  return run;
}

std::vector<ExpectedPerplexity> read_expected_perplexities(const std::string& path) {
  return read_expected_run(path).variants;
}

std::string expected_variant_list(const std::vector<ExpectedPerplexity>& expected) {
  std::string list;
  for (const ExpectedPerplexity& e : expected) list += (list.empty() ? "" : ",") + e.variant;
  return list;
}

namespace {

// Two spellings of one variant ("absmax:8" and "absmax:8:tensor:minmax") are the same variant:
// compared by canonical_spec. A name that does not parse is compared as written.
std::string variant_key(const std::string& spec) {
  try {
    return canonical_spec(parse_variant(spec));
  } catch (const Error&) {
    return spec;
  }
}

}  // namespace

std::vector<std::string> check_regressions(const CompareReport& report,
                                           const std::vector<ExpectedPerplexity>& expected) {
  std::vector<std::string> failures;
  for (const ExpectedPerplexity& e : expected) {
    const std::string key = variant_key(e.variant);
    const VariantResult* found = nullptr;
    for (const VariantResult& r : report.results) {
      if (variant_key(r.variant) == key) found = &r;
    }
    if (found == nullptr) {
      failures.push_back(fmt::format("{}: expected in the run but not evaluated", e.variant));
      continue;
    }
    const double drift_pct = 100.0 * (found->ppl / e.ppl - 1.0);
    if (!(std::abs(drift_pct) <= e.tolerance_pct)) {
      failures.push_back(fmt::format("{}: perplexity {:.6g} drifted {:+.3f}% from the expected {:.6g} (tolerance {:.3f}%)",
                                     e.variant, found->ppl, drift_pct, e.ppl, e.tolerance_pct));
    }
  }
  return failures;
}

std::vector<std::string> check_regressions(const CompareReport& report, const ExpectedRun& expected) {
  std::vector<std::string> failures;
  if (!expected.model_sha256.empty() && expected.model_sha256 != report.model_sha256) {
    failures.push_back(fmt::format("model {} has sha256 {}, the baseline was made with {}; re-baseline after an intended change",
                                   report.model_path, report.model_sha256, expected.model_sha256));
  }
  if (!expected.text_sha256.empty() && expected.text_sha256 != report.text_sha256) {
    failures.push_back(fmt::format("text {} has sha256 {}, the baseline was made with {}; re-baseline after an intended change",
                                   report.text_path, report.text_sha256, expected.text_sha256));
  }
  for (std::string& f : check_regressions(report, expected.variants)) failures.push_back(std::move(f));
  return failures;
}

}  // namespace quantppl
