// Rendering a CompareReport for people (table) and for scripts (JSON, CSV).
//
// JSON: one object with the run's settings and reproducibility fields at the
// top level and "results": [ {variant, ppl, ppl_stderr, nll, tokens,
// delta_ppl_pct, kl_mean, kl_mean_stderr, kl_min, kl_p001 ... kl_p999, kl_max,
// top1_agreement, top1_agreement_stderr, delta_nll_mean, delta_nll_ci95,
// ppl_ratio, ppl_ratio_ci95_low, ppl_ratio_ci95_high, nll_correlation,
// delta_p_mean, delta_p_mean_stderr, delta_p_rms, delta_p_rms_stderr,
// delta_p_min, delta_p_p001 ... delta_p_p999, delta_p_max, weight_mse,
// weight_sqnr_db, ..., seconds}, ... ] (the statistics are defined in
// distribution_metrics.h; percentile suffixes: p001 = 0.1%, p01 = 1%, p05,
// p10, p25, median, p75, p90, p95, p99, p999 = 99.9%). Absent values (the
// weight error of fp32, an infinite SQNR, a NaN, a standard error at N = 1)
// are null.
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
// `compare --stats`: per variant, the three blocks llama.cpp's
// `llama-perplexity --kl-divergence` prints (perplexity, KL divergence,
// token probability statistics), in its line layout and order, with Q = the
// variant and base = fp32, plus the 95% interval of PPL(Q)/PPL(base).
std::string format_stats(const CompareReport& report);

}  // namespace quantppl
