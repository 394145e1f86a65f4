// The perplexity regression gate: compare a run against expected values.
//
// Expected file (JSON):
//   {"format_version": 1, "tolerance_pct": 0.5,
//    "variants": [{"variant": "fp32", "ppl": 25.41}, {"variant": "absmax:8", "ppl": 25.47,
//                  "tolerance_pct": 1.0}, ...]}
// A `quantppl compare --format json` output is accepted too (its "results").
// A variant passes when |ppl - expected| <= expected * tolerance_pct / 100 —
// both directions: an unexplained improvement is a change to look at too.
// Every expected variant must be present in the run, matched by canonical spec
// ("absmax:8" and "absmax:8:tensor:minmax" are one variant). Optional top-level
// "model_sha256" / "text_sha256" pin the inputs: a different model or text
// is a failure too (the baseline no longer describes what was measured).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "quantppl/compare.h"

namespace quantppl {

constexpr double kDefaultTolerancePct = 0.5;

struct ExpectedPerplexity {
  std::string variant;
  double ppl;
  double tolerance_pct;
};

struct ExpectedRun {
  std::string model_sha256;  // empty: not pinned
  std::string text_sha256;   // empty: not pinned
  std::vector<ExpectedPerplexity> variants;
};

// Throws IoError/DataError naming the file and the field.
ExpectedRun read_expected_run(const std::string& path);
std::vector<ExpectedPerplexity> read_expected_perplexities(const std::string& path);

// The variants listed in `expected`, as comma-separated specs.
std::string expected_variant_list(const std::vector<ExpectedPerplexity>& expected);

// The band of perplexities that passes, per expected variant:
// [ppl (1 - tol/100), ppl (1 + tol/100)], the check below. compare --ci-target
// stops a variant once its interval settles the decision (early_stopping.h
// rule 2); the check itself then runs on the variant's reported perplexity,
// i.e. on the tokens it evaluated (compare.h).
std::map<std::string, std::pair<double, double>> gate_bands(const std::vector<ExpectedPerplexity>& expected);

// One message per failure ("absmax:8: perplexity 25.61 drifted +0.79% from the expected
// 25.41 (tolerance 0.50%)"); empty when the run passes.
std::vector<std::string> check_regressions(const CompareReport& report,
                                           const std::vector<ExpectedPerplexity>& expected);
// The same, plus the pinned sha256s.
std::vector<std::string> check_regressions(const CompareReport& report, const ExpectedRun& expected);

}  // namespace quantppl
