// Rendering a CompareReport for people (table) and for scripts (JSON, CSV).
//
// JSON: one object with the run's settings and reproducibility fields at the
// top level and "results": [ {variant, ppl, ppl_stderr, nll, tokens,
// delta_ppl_pct, kl_mean, kl_p99, kl_max, top1_agreement, delta_nll_mean,
// delta_nll_ci95, weight_mse, weight_sqnr_db, ..., seconds}, ... ]. Absent
// values (the weight error of fp32, an infinite SQNR, a NaN) are null.
// CSV: a header row, then one row per variant with the same per-variant
// fields followed by the settings columns (a tidy table for sweeps). Absent
// values are empty cells. Numbers carry 17 significant digits in JSON/CSV.
#pragma once

#include <string>

#include "quantppl/compare.h"

namespace quantppl {

std::string format_table(const CompareReport& report);
std::string format_json(const CompareReport& report);
std::string format_csv(const CompareReport& report);

}  // namespace quantppl
