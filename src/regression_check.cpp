#include "quantppl/regression_check.h"

#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "quantppl/error.h"
#include "quantppl/json_input.h"
#include "quantppl/input_file.h"
#include "quantppl/variant_spec.h"

namespace quantppl {

ExpectedRun read_expected_run(const std::string& path) {
  // A regular file within kMaxCheckFileBytes (input_file.h: --check /dev/zero would read forever),
  // then the one JSON reader (json_input.h: nesting limit, typed fields).
  const nlohmann::json j = parse_json(read_input_file(path, kCheckFileInput), fmt::format("--check file '{}'", path));
  const JsonReader r(fmt::format("--check file '{}'", path));
  r.require_object(j, "");
  const double default_tolerance =
      r.has(j, "tolerance_pct") ? r.number(j, "tolerance_pct", "", 0.0) : kDefaultTolerancePct;
  // A `quantppl compare --format json` output lists its variants as "results".
  const char* list_key = r.has(j, "variants") || !r.has(j, "results") ? "variants" : "results";
  const nlohmann::json& list = r.array(j, list_key);
  if (list.empty()) r.fail(list_key, "must be a non-empty array of {variant, ppl}");
  ExpectedRun run;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string field = fmt::format("{}[{}]", list_key, i);
    const nlohmann::json& item = list[i];
    r.require_object(item, field);
    ExpectedPerplexity e;
    e.variant = r.string(item, "variant", field);
    e.ppl = r.number(item, "ppl", field, 0.0);
    if (!(e.ppl > 0)) r.fail(field + ".ppl", "must be > 0, got 0");
    e.tolerance_pct = r.has(item, "tolerance_pct") ? r.number(item, "tolerance_pct", field, 0.0) : default_tolerance;
    run.variants.push_back(std::move(e));
  }
  if (r.has(j, "model_sha256")) run.model_sha256 = r.string(j, "model_sha256");
  if (r.has(j, "text_sha256")) run.text_sha256 = r.string(j, "text_sha256");
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
