#include "quantppl/regression_check.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "quantppl/error.h"

namespace quantppl {

ExpectedRun read_expected_run(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(fmt::format("--check: cannot read '{}'", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(buffer.str());
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

std::map<std::string, std::pair<double, double>> gate_bands(const std::vector<ExpectedPerplexity>& expected) {
  std::map<std::string, std::pair<double, double>> bands;
  for (const ExpectedPerplexity& e : expected) {
    bands[e.variant] = {e.ppl * (1.0 - e.tolerance_pct / 100.0), e.ppl * (1.0 + e.tolerance_pct / 100.0)};
  }
  return bands;
}

std::vector<std::string> check_regressions(const CompareReport& report,
                                           const std::vector<ExpectedPerplexity>& expected) {
  std::vector<std::string> failures;
  for (const ExpectedPerplexity& e : expected) {
    const VariantResult* found = nullptr;
    for (const VariantResult& r : report.results) {
      if (r.variant == e.variant) found = &r;
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
  if (!expected.model_sha256.empty() && expected.model_sha256 != report.provenance.model_sha256) {
    failures.push_back(fmt::format("model {} has sha256 {}, the baseline was made with {}; re-baseline after an intended change",
                                   report.provenance.model_path, report.provenance.model_sha256, expected.model_sha256));
  }
  if (!expected.text_sha256.empty() && expected.text_sha256 != report.provenance.text_sha256) {
    failures.push_back(fmt::format("text {} has sha256 {}, the baseline was made with {}; re-baseline after an intended change",
                                   report.provenance.text_path, report.provenance.text_sha256, expected.text_sha256));
  }
  for (std::string& f : check_regressions(report, expected.variants)) failures.push_back(std::move(f));
  return failures;
}

}  // namespace quantppl
