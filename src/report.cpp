#include "quantppl/report.h"

#include <cmath>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "json_rows.h"

namespace quantppl {
namespace {

using nlohmann::ordered_json;
using json_rows::csv_table;
using json_rows::number_or_null;

ordered_json settings_json(const CompareReport& r) {
  ordered_json j = to_json(r.provenance);
  j["layers_quantized"] = r.layers_quantized;
  j["parameters_quantized"] = r.parameters_quantized;
  j["backup"] = r.backup;
  j["looks"] = r.provenance.ci_target_pct ? ordered_json(r.looks) : ordered_json(nullptr);
  j["stop_z"] = r.provenance.ci_target_pct ? number_or_null(r.stop_z) : ordered_json(nullptr);
  j["load_seconds"] = r.load_seconds;
  j["total_seconds"] = r.total_seconds;
  return j;
}

ordered_json result_json(const VariantResult& v) {
  ordered_json j;
  j["variant"] = v.variant;
  j["ppl"] = v.ppl;
  j["ppl_stderr"] = number_or_null(v.ppl_stderr);
  j["nll"] = v.nll;
  j["tokens"] = v.tokens;
  j["delta_ppl_pct"] = number_or_null(v.delta_ppl_pct);
  j["kl_mean"] = number_or_null(v.kl_mean);
  j["kl_p99"] = number_or_null(v.kl_p99);
  j["kl_max"] = number_or_null(v.kl_max);
  j["top1_agreement"] = number_or_null(v.top1_agreement);
  j["delta_nll_mean"] = number_or_null(v.delta_nll_mean);
  j["delta_nll_ci95"] = number_or_null(v.delta_nll_ci95);
  j["weight_mse"] = number_or_null(v.weight_mse);
  j["weight_sqnr_db"] = number_or_null(v.weight_sqnr_db);
  j["packed_bytes"] = v.packed_bytes ? ordered_json(*v.packed_bytes) : ordered_json(nullptr);
  j["fp32_bytes"] = v.fp32_bytes;
  j["compression_ratio"] = v.packed_bytes && *v.packed_bytes > 0
                               ? ordered_json(static_cast<double>(v.fp32_bytes) / static_cast<double>(*v.packed_bytes))
                               : ordered_json(nullptr);
  j["seconds"] = v.seconds;
  j["stopped_early"] = v.stopped_early;
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
    ordered_json row = result_json(v);
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
  out += fmt::format("\n{:<26} {:>18} {:>9} {:>20} {:>10} {:>7} {:>10} {:>8} {:>17} {:>8}\n", "variant", "perplexity",
                     "vs fp32", "dNLL/token (95% CI)", "KL mean", "top-1", "weight MSE", "SQNR dB", "packed", "seconds");
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
    out += fmt::format("{:<26} {:>18} {:>9} {:>20} {:>10.3g} {:>6.2f}% {:>10} {:>8} {:>17} {:>8.2f}\n", v.variant,
                       fmt::format("{:.4f} ± {:.3f}", v.ppl, v.ppl_stderr), delta,
                       fmt::format("{:+.5f} ± {:.5f}", v.delta_nll_mean, v.delta_nll_ci95), v.kl_mean,
                       100.0 * v.top1_agreement, mse, sqnr, packed, v.seconds);
  }
  out += fmt::format("\n{} tokens predicted per variant; ± is one standard error for perplexity and the 95% "
                     "interval of the paired per-token NLL change against fp32.\n",
                     r.results.empty() ? 0 : r.results.front().tokens);
  for (const VariantResult& v : r.results) {
    if (v.stopped_early) {
      out += fmt::format("{}: stopped early after {} tokens (its numbers are on those tokens)\n", v.variant, v.tokens);
    }
  }
  return out;
}

}  // namespace quantppl
