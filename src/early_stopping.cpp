#include "quantppl/early_stopping.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "quantppl/error.h"

namespace quantppl {

double normal_quantile(double p) {
  if (!(p > 0 && p < 1)) throw UsageError(fmt::format("normal_quantile: p must be in (0, 1), got {}", p));
  // Phi(x) = erfc(-x / sqrt 2) / 2 is increasing; bisect on [-40, 40].
  double lo = -40, hi = 40;
  for (int i = 0; i < 200 && hi - lo > 1e-13; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p) lo = mid;
    else hi = mid;
  }
  return 0.5 * (lo + hi);
}

bool LookSchedule::is_look(size_t batches_done) const {
  return std::binary_search(after_batches.begin(), after_batches.end(), batches_done);
}

LookSchedule plan_looks(const std::vector<int64_t>& batch_tokens, double alpha) {
  int64_t total = 0;
  for (const int64_t t : batch_tokens) total += t;
  LookSchedule s;
  // t_k exactly: 2^(k/2) for even k (no sqrt(2)^2 rounding above a power of two).
  const auto threshold_of = [](int k) {
    return std::ldexp(static_cast<double>(kFirstLookTokens), k / 2) * (k % 2 == 1 ? std::sqrt(2.0) : 1.0);
  };
  int k = 0;
  int64_t seen = 0;
  for (size_t b = 0; b + 1 < batch_tokens.size(); ++b) {  // the last batch is never a look
    seen += batch_tokens[b];
    if (static_cast<double>(seen) < threshold_of(k) || seen >= total) continue;
    s.after_batches.push_back(b + 1);
    while (threshold_of(k) <= static_cast<double>(seen)) ++k;  // (2)
  }
  if (!s.after_batches.empty()) {
    s.z = normal_quantile(1.0 - alpha / (2.0 * static_cast<double>(s.after_batches.size())));  // (3)
  }
  return s;
}

bool ratio_precise_enough(const MeanEstimate& d, double z, double ci_target_pct) {
  const double h = z * d.sd_of_mean;                              // (3)
  return d.n >= 2 && std::isfinite(h) && h <= std::log1p(ci_target_pct / 100.0);  // (4)
}

std::optional<bool> gate_settled(const MeanEstimate& nll, double z, double ppl_lo, double ppl_hi) {
  if (nll.n < 2) return std::nullopt;
  const double h = z * nll.sd_of_mean;
  if (!std::isfinite(h) || !std::isfinite(nll.mean)) return std::nullopt;
  const double lo = std::exp(nll.mean - h), hi = std::exp(nll.mean + h);  // (5)
  if (lo >= ppl_lo && hi <= ppl_hi) return true;
  if (hi < ppl_lo || lo > ppl_hi) return false;
  return std::nullopt;
}

}  // namespace quantppl
