#include "quantppl/report.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "json_rows.h"

namespace quantppl {
namespace {

using nlohmann::ordered_json;
using json_rows::csv_table;
using json_rows::number_or_null;
using json_rows::calibration_json;
using json_rows::flatten_calibration;

ordered_json settings_json(const CompareReport& r) {
  ordered_json j = to_json(r.provenance);
  j["layers_quantized"] = r.layers_quantized;
  j["parameters_quantized"] = r.parameters_quantized;
  j["backup"] = r.backup;
  j["looks"] = r.provenance.ci_target_pct ? ordered_json(r.looks) : ordered_json(nullptr);
  j["stop_z"] = r.provenance.ci_target_pct ? number_or_null(r.stop_z) : ordered_json(nullptr);
  j["load_seconds"] = r.load_seconds;
  j["calibration_seconds"] = r.calibration_seconds;
  j["total_seconds"] = r.total_seconds;
  return j;
}

// prefix_min, prefix_p001 ... prefix_p999, prefix_max: the spread of one per-token quantity.
void add_spread(ordered_json& j, const std::string& prefix, const TokenValueStats& s) {
  j[prefix + "_min"] = number_or_null(s.min);
  j[prefix + "_p001"] = number_or_null(s.p001);
  j[prefix + "_p01"] = number_or_null(s.p01);
  j[prefix + "_p05"] = number_or_null(s.p05);
  j[prefix + "_p10"] = number_or_null(s.p10);
  j[prefix + "_p25"] = number_or_null(s.p25);
  j[prefix + "_median"] = number_or_null(s.median);
  j[prefix + "_p75"] = number_or_null(s.p75);
  j[prefix + "_p90"] = number_or_null(s.p90);
  j[prefix + "_p95"] = number_or_null(s.p95);
  j[prefix + "_p99"] = number_or_null(s.p99);
  j[prefix + "_p999"] = number_or_null(s.p999);
  j[prefix + "_max"] = number_or_null(s.max);
}

ordered_json result_json(const VariantResult& v) {
  const DistributionStats& d = v.distribution;
  ordered_json j;
  j["variant"] = v.variant;
  j["spec"] = v.spec;
  j["ppl"] = v.ppl;
  j["ppl_stderr"] = number_or_null(v.ppl_stderr);
  j["nll"] = v.nll;
  j["tokens"] = v.tokens;
  j["delta_ppl_pct"] = number_or_null(v.delta_ppl_pct);
  j["kl_mean"] = number_or_null(v.kl_mean);
  j["kl_mean_stderr"] = number_or_null(d.kl.mean_stderr);
  add_spread(j, "kl", d.kl);
  // The flat fields, which run_compare copies from d.kl, win (in place: ordered_json keeps the key's position).
  j["kl_p99"] = number_or_null(v.kl_p99);
  j["kl_max"] = number_or_null(v.kl_max);
  j["top1_agreement"] = number_or_null(v.top1_agreement);
  j["top1_agreement_stderr"] = number_or_null(d.top1_agreement_stderr);
  j["delta_nll_mean"] = number_or_null(v.delta_nll_mean);
  j["delta_nll_ci95"] = number_or_null(v.delta_nll_ci95);
  j["ppl_ratio"] = number_or_null(d.ppl_ratio);
  j["ppl_ratio_ci95_low"] = number_or_null(d.ppl_ratio_ci95_low);
  j["ppl_ratio_ci95_high"] = number_or_null(d.ppl_ratio_ci95_high);
  j["nll_correlation"] = number_or_null(d.nll_correlation);
  j["delta_p_mean"] = number_or_null(d.delta_p.mean);
  j["delta_p_mean_stderr"] = number_or_null(d.delta_p.mean_stderr);
  j["delta_p_rms"] = number_or_null(d.delta_p_rms);
  j["delta_p_rms_stderr"] = number_or_null(d.delta_p_rms_stderr);
  add_spread(j, "delta_p", d.delta_p);
  j["weight_mse"] = number_or_null(v.weight_mse);
  j["weight_sqnr_db"] = number_or_null(v.weight_sqnr_db);
  j["packed_bytes"] = v.packed_bytes ? ordered_json(*v.packed_bytes) : ordered_json(nullptr);
  j["fp32_bytes"] = v.fp32_bytes;
  j["compression_ratio"] = v.packed_bytes && *v.packed_bytes > 0
                               ? ordered_json(static_cast<double>(v.fp32_bytes) / static_cast<double>(*v.packed_bytes))
                               : ordered_json(nullptr);
  j["bits_per_weight"] = v.bits_per_weight ? ordered_json(*v.bits_per_weight) : ordered_json(nullptr);
  j["seconds"] = v.seconds;
  j["stopped_early"] = v.stopped_early;
  // Methods (issue 15/16), after the fields of earlier versions so that their order is kept.
  j["method"] = v.method;
  j["calibration"] = calibration_json(v.calibration);
  j["rtn_delta_nll_mean"] = number_or_null(v.rtn_delta_nll_mean);
  j["rtn_delta_nll_ci95"] = number_or_null(v.rtn_delta_nll_ci95);
  j["method_seconds"] = v.method_seconds;
  return j;
}

std::string short_hash(const std::string& sha) { return sha.substr(0, 12); }

// Bytes in binary units with 3 significant digits: "22.1 MiB".
std::string human_bytes(int64_t bytes) {
  const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < sizeof units / sizeof units[0]) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.3g} {}", value, units[unit]);
}

}  // namespace

std::string format_json(const CompareReport& report) {
  ordered_json j = settings_json(report);
  j["results"] = ordered_json::array();
  for (const VariantResult& v : report.results) j["results"].push_back(result_json(v));
  return j.dump(2) + "\n";
}

std::string format_csv(const CompareReport& report) {
  const ordered_json settings = settings_json(report);
  std::vector<ordered_json> rows;
  for (const VariantResult& v : report.results) {
    ordered_json row = flatten_calibration(result_json(v));
    for (const auto& [key, value] : settings.items()) row[key] = value;
    rows.push_back(std::move(row));
  }
  return csv_table(rows);
}

std::string format_table(const CompareReport& r) {
  std::string out;
  const Provenance& p = r.provenance;
  out += fmt::format("model  {}  (sha256 {}, {} Linear layers / {} weights quantized)\n", p.model_path,
                     short_hash(p.model_sha256), r.layers_quantized, r.parameters_quantized);
  out += fmt::format("text   {}  (sha256 {}, {} tokens, {} windows of <= {}, mode {})\n", p.text_path,
                     short_hash(p.text_sha256), p.text_tokens, p.windows, p.max_length, p.mode);
  if (p.ci_target_pct) {
    out += fmt::format("early stopping: --ci-target {}%, windows shuffled with seed {}, {} looks at z = {:.3f}\n",
                       *p.ci_target_pct, p.seed.value_or(0), r.looks, r.stop_z);
  }
  for (const VariantResult& v : r.results) {
    if (!v.calibration) continue;
    const CalibrationProvenance& c = *v.calibration;
    out += fmt::format("calibration  {}  (sha256 {}, {} tokens, mode {}{})\n", c.text_path, short_hash(c.text_sha256),
                       c.tokens, c.mode, c.stats_path.empty() ? "" : ", statistics from " + c.stats_path);
    break;  // one calibration per run
  }
  size_t width = 26;
  for (const VariantResult& v : r.results) width = std::max(width, v.variant.size());
  out += fmt::format("\n{:<{}} {:>18} {:>9} {:>20} {:>10} {:>7} {:>10} {:>8} {:>17} {:>6} {:>8}\n", "variant", width,
                     "perplexity", "vs fp32", "dNLL/token (95% CI)", "KL mean", "top-1", "weight MSE", "SQNR dB", "packed",
                     "bits/w", "seconds");
  for (const VariantResult& v : r.results) {
    const std::string delta = v.delta_ppl_pct ? fmt::format("{:+.2f}%", *v.delta_ppl_pct) : "-";
    const std::string mse = v.weight_mse ? fmt::format("{:.3e}", *v.weight_mse) : "-";
    const std::string sqnr = v.weight_sqnr_db && std::isfinite(*v.weight_sqnr_db)
                                 ? fmt::format("{:.2f}", *v.weight_sqnr_db)
                                 : (v.weight_sqnr_db ? "inf" : "-");
    const std::string packed = v.packed_bytes && *v.packed_bytes > 0
                                   ? fmt::format("{} (x{:.2f})", human_bytes(*v.packed_bytes),
                                                 static_cast<double>(v.fp32_bytes) / static_cast<double>(*v.packed_bytes))
                                   : "-";
    const std::string bits = v.bits_per_weight ? fmt::format("{:.3g}", *v.bits_per_weight) : "-";
    out += fmt::format("{:<{}} {:>18} {:>9} {:>20} {:>10.3g} {:>6.2f}% {:>10} {:>8} {:>17} {:>6} {:>8.2f}\n", v.variant, width,
                       fmt::format("{:.4f} ± {:.3f}", v.ppl, v.ppl_stderr), delta,
                       fmt::format("{:+.5f} ± {:.5f}", v.delta_nll_mean, v.delta_nll_ci95), v.kl_mean,
                       100.0 * v.top1_agreement, mse, sqnr, packed, bits, v.seconds);
  }
  out += fmt::format("\n{} tokens predicted per variant; ± is one standard error for perplexity and the 95% "
                     "interval of the paired per-token NLL change against fp32. --stats: every statistic per variant.\n",
                     r.results.empty() ? 0 : r.results.front().tokens);
  bool header = false;
  for (const VariantResult& v : r.results) {
    if (!v.rtn_delta_nll_mean || !v.rtn_delta_nll_ci95) continue;
    if (!header) out += "\nmethods against round to nearest of the same format (paired dNLL/token, 95% CI; < 0: better):\n";
    header = true;
    const double d = *v.rtn_delta_nll_mean, ci = *v.rtn_delta_nll_ci95;
    out += fmt::format("  {:<{}} {:+.5f} ± {:.5f}  {}\n", v.variant, width, d, ci,
                       std::abs(d) <= ci ? "within noise" : d < 0 ? "better, beyond noise" : "worse, beyond noise");
  }
  for (const VariantResult& v : r.results) {
    if (v.stopped_early) {
      out += fmt::format("{}: stopped early after {} tokens (its numbers are on those tokens)\n", v.variant, v.tokens);
    }
  }
  return out;
}

std::string format_stats(const CompareReport& r) {
  std::string out;
  for (const VariantResult& v : r.results) {
    const DistributionStats& d = v.distribution;
    out += fmt::format("\n====== {} against fp32: {} tokens ======\n", v.variant, d.tokens);
    // Perplexity block. PPL's ± is ppl * stderr(nll) (delta method); the
    // difference's ± adds both with their covariance, corr * se_q * se_base.
    const double ppl_q = std::exp(d.nll_mean);
    const double ppl_base = std::exp(d.reference_nll_mean);
    const double u_q = ppl_q * d.nll_mean_stderr;
    const double u_base = ppl_base * d.reference_nll_mean_stderr;
    const double diff_u = std::sqrt(std::max(0.0, u_q * u_q + u_base * u_base - 2.0 * d.nll_correlation * u_q * u_base));
    out += "====== Perplexity statistics ======\n";
    out += fmt::format("Mean PPL(Q)                   : {:10.6f} ± {:10.6f}\n", ppl_q, u_q);
    out += fmt::format("Mean PPL(base)                : {:10.6f} ± {:10.6f}\n", ppl_base, u_base);
    out += fmt::format("Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2f}%\n", 100.0 * d.nll_correlation);
    out += fmt::format("Mean ln(PPL(Q)/PPL(base))     : {:10.6f} ± {:10.6f}\n", d.delta_nll_mean, d.delta_nll_stderr);
    out += fmt::format("Mean PPL(Q)/PPL(base)         : {:10.6f} ± {:10.6f}   95% CI [{:.6f}, {:.6f}]\n", d.ppl_ratio,
                       d.ppl_ratio * d.delta_nll_stderr, d.ppl_ratio_ci95_low, d.ppl_ratio_ci95_high);
    out += fmt::format("Mean PPL(Q)-PPL(base)         : {:10.6f} ± {:10.6f}\n", ppl_q - ppl_base,
                       std::isfinite(d.nll_correlation) ? diff_u : std::nan(""));
    // KL block: nats, highest first (llama.cpp's order).
    // "-" for a percentile that was not computed (a comparison that kept sums only).
    const auto value = [](const std::optional<double>& x, double scale, int width, int precision) {
      return x ? fmt::format("{:{}.{}f}", scale * *x, width, precision) : fmt::format("{:>{}}", "-", width);
    };
    out += "\n====== KL divergence statistics ======\n";
    out += fmt::format("Mean    KLD: {:10.6f} ± {:10.6f}\n", d.kl.mean, d.kl.mean_stderr);
    const std::pair<const char*, std::optional<double>> kl_rows[] = {
        {"Maximum", d.kl.max}, {"99.9%  ", d.kl.p999}, {"99.0%  ", d.kl.p99}, {"95.0%  ", d.kl.p95},
        {"90.0%  ", d.kl.p90}, {"Median ", d.kl.median}, {"10.0%  ", d.kl.p10}, {" 5.0%  ", d.kl.p05},
        {" 1.0%  ", d.kl.p01}, {" 0.1%  ", d.kl.p001}, {"Minimum", d.kl.min}};
    for (const auto& [label, x] : kl_rows) out += fmt::format("{} KLD: {}\n", label, value(x, 1.0, 10, 6));
    // Token probability block: Δp in percentage points.
    out += "\n====== Token probability statistics ======\n";
    out += fmt::format("Mean    Δp: {:6.3f} ± {:5.3f} %\n", 100.0 * d.delta_p.mean, 100.0 * d.delta_p.mean_stderr);
    const std::pair<const char*, std::optional<double>> dp_rows[] = {
        {"Maximum", d.delta_p.max}, {"99.9%  ", d.delta_p.p999}, {"99.0%  ", d.delta_p.p99},
        {"95.0%  ", d.delta_p.p95}, {"90.0%  ", d.delta_p.p90},  {"75.0%  ", d.delta_p.p75},
        {"Median ", d.delta_p.median}, {"25.0%  ", d.delta_p.p25}, {"10.0%  ", d.delta_p.p10},
        {" 5.0%  ", d.delta_p.p05}, {" 1.0%  ", d.delta_p.p01}, {" 0.1%  ", d.delta_p.p001},
        {"Minimum", d.delta_p.min}};
    for (const auto& [label, x] : dp_rows) out += fmt::format("{} Δp: {}%\n", label, value(x, 100.0, 6, 3));
    out += fmt::format("RMS Δp    : {:6.3f} ± {:5.3f} %\n", 100.0 * d.delta_p_rms, 100.0 * d.delta_p_rms_stderr);
    out += fmt::format("Same top p: {:6.3f} ± {:5.3f} %\n", 100.0 * d.top1_agreement, 100.0 * d.top1_agreement_stderr);
  }
  return out;
}

}  // namespace quantppl
