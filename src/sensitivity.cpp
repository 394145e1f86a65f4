#include "quantppl/sensitivity.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cmath>
#include <map>
#include <numeric>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "json_rows.h"
#include <torch/torch.h>

#include "quantppl/contract_model.h"
#include "quantppl/default_paths.h"
#include "quantppl/error.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/packed_model.h"
#include "quantppl/sha256.h"
#include "quantppl/text_windows.h"

namespace quantppl {

const char* const kDefaultKeep = "0,1,2,4,8";

namespace {

using nlohmann::ordered_json;
using json_rows::csv_cell;
using json_rows::number_or_null;
using Subset = std::vector<bool>;  // subset[i]: layer i is fake-quantized

// Sums for one subset over every batch.
struct SubsetSums {
  double nll_sum = 0;
  int64_t tokens = 0;
  double kl_sum = 0;
  double ppl() const { return std::exp(nll_sum / static_cast<double>(tokens)); }
  double kl_mean() const { return kl_sum / static_cast<double>(tokens); }
};

// Puts subsets of the layers in place by copying only the layers whose state changes.
class LayerSwitch {
 public:
  LayerSwitch(WeightBackup& backup, const QuantConfig& config) : backup_(backup) {
    torch::NoGradGuard no_grad;
    backup_.restore();
    quantized_.reserve(backup_.layers().size());
    for (size_t i = 0; i < backup_.layers().size(); ++i) {
      quantized_.push_back(fake_quantize(backup_.original(i), config, backup_.layers()[i].name));
    }
    current_.assign(backup_.layers().size(), false);
  }

  void set(const Subset& subset) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < subset.size(); ++i) {
      if (subset[i] == current_[i]) continue;
      backup_.layers()[i].weight.copy_(subset[i] ? quantized_[i] : backup_.original(i));
      current_[i] = subset[i];
    }
  }

 private:
  WeightBackup& backup_;
  std::vector<torch::Tensor> quantized_;
  Subset current_;
};

// Sum over the batch's label positions of the NLL, exactly as evaluate_perplexity sums it.
double batch_nll_sum(const torch::Tensor& logits, const EvalBatch& b) {
  return token_nll(logits, b.labels).masked_select(b.label_mask).to(torch::kFloat64).sum().item<double>();
}

// Sum over label positions of KL(P || Q), P from the reference log-probabilities,
// one row at a time so that no temporary exceeds [T, V].
double batch_kl_sum(const torch::Tensor& reference_logp, const torch::Tensor& logits, const EvalBatch& b) {
  double total = 0;
  for (int64_t r = 0; r < logits.size(0); ++r) {
    const torch::Tensor lp = reference_logp[r];
    const torch::Tensor lq = torch::log_softmax(logits[r], /*dim=*/-1);
    const torch::Tensor kl = (lp.exp() * (lp - lq)).sum(/*dim=*/-1);
    total += kl.masked_select(b.label_mask[r]).to(torch::kFloat64).sum().item<double>();
  }
  return total;
}

// Batch-major evaluation of `subsets` against fp32. Returns the fp32 sums
// (KL 0) and one SubsetSums per subset. An all-false subset is fp32 itself.
std::vector<SubsetSums> evaluate_subsets(ContractModel& model, const std::vector<EvalBatch>& batches,
                                         LayerSwitch& layers, const std::vector<Subset>& subsets, SubsetSums* fp32,
                                         const std::string& stage, const SensitivityProgress& progress) {
  torch::NoGradGuard no_grad;
  std::vector<SubsetSums> sums(subsets.size());
  const size_t total = batches.size() * (subsets.size() + 1);
  size_t done = 0;
  const Subset none(subsets.empty() ? 0 : subsets.front().size(), false);
  for (const EvalBatch& b : batches) {
    if (!subsets.empty()) layers.set(none);
    torch::Tensor reference = model.forward(b.input_ids, b.attention_mask, b.decoder_input_ids);
    const double reference_nll = batch_nll_sum(reference, b);
    const int64_t tokens = b.label_mask.sum().item<int64_t>();
    fp32->nll_sum += reference_nll;
    fp32->tokens += tokens;
    // Only the log-probabilities are kept: one [B, T, V] fp32 tensor per batch, whatever the text length.
    const torch::Tensor reference_logp = torch::log_softmax(reference, /*dim=*/-1);
    reference.reset();
    if (progress) progress(stage, ++done, total);
    for (size_t s = 0; s < subsets.size(); ++s) {
      SubsetSums& out = sums[s];
      out.tokens += tokens;
      if (std::none_of(subsets[s].begin(), subsets[s].end(), [](bool q) { return q; })) {
        out.nll_sum += reference_nll;
      } else {
        layers.set(subsets[s]);
        const torch::Tensor logits = model.forward(b.input_ids, b.attention_mask, b.decoder_input_ids);
        out.nll_sum += batch_nll_sum(logits, b);
        out.kl_sum += batch_kl_sum(reference_logp, logits, b);
      }
      if (progress) progress(stage, ++done, total);
    }
  }
  if (!subsets.empty()) layers.set(none);
  for (size_t s = 0; s < subsets.size(); ++s) {
    if (!std::isfinite(sums[s].nll_sum)) {
      throw DataError(fmt::format("model '{}': the negative log-likelihood is not finite with quantized layers: "
                                  "the model produced NaN or Inf logits",
                                  model.path()));
    }
  }
  return sums;
}

double delta_pct(double ppl, double fp32_ppl) { return 100.0 * (ppl / fp32_ppl - 1.0); }

std::string part_of(const std::string& name) {
  if (name.rfind("encoder.", 0) == 0) return "encoder";
  if (name.rfind("decoder.", 0) == 0) return "decoder";
  if (name.rfind("lm_head", 0) == 0) return "lm_head";
  return "";
}

// Evaluates subsets once each: identical subsets share one result.
class SubsetTable {
 public:
  size_t add(const Subset& s) {
    const auto it = index_.find(s);
    if (it != index_.end()) return it->second;
    subsets_.push_back(s);
    index_.emplace(s, subsets_.size() - 1);
    return subsets_.size() - 1;
  }
  const std::vector<Subset>& subsets() const { return subsets_; }

 private:
  std::vector<Subset> subsets_;
  std::map<Subset, size_t> index_;
};

}  // namespace

std::vector<int64_t> parse_keep_list(const std::string& text) {
  std::vector<int64_t> keep;
  std::stringstream in(text);
  std::string item;
  if (text.empty()) throw UsageError("--keep: expected comma-separated non-negative integers, e.g. 0,1,2,4,8, got ''");
  while (std::getline(in, item, ',')) {
    const auto first = item.find_first_not_of(" \t");
    const auto last = item.find_last_not_of(" \t");
    const std::string trimmed = first == std::string::npos ? "" : item.substr(first, last - first + 1);
    if (trimmed.empty() || trimmed.find_first_not_of("0123456789") != std::string::npos || trimmed.size() > 9) {
      throw UsageError(fmt::format("--keep: '{}' is not a non-negative integer (expected e.g. 0,1,2,4,8) in '{}'",
                                   trimmed, text));
    }
    keep.push_back(std::stoll(trimmed));
  }
  if (!text.empty() && text.back() == ',') {
    throw UsageError(fmt::format("--keep: empty item in '{}' (expected e.g. 0,1,2,4,8)", text));
  }
  std::sort(keep.begin(), keep.end());
  keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
  return keep;
}

SensitivityReport run_sensitivity(const SensitivityOptions& options, const SensitivityProgress& progress) {
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  if (options.variant.is_fp32) {
    throw UsageError("--variant: sensitivity needs a quantized variant, got fp32");
  }
  validate(options.variant.config);
  if (options.batch_size <= 0) throw UsageError(fmt::format("--batch-size must be >= 1, got {}", options.batch_size));
  if (options.max_length < 0) throw UsageError(fmt::format("--max-length must be >= 0, got {}", options.max_length));
  if (options.max_tokens < 0) throw UsageError(fmt::format("--max-tokens must be >= 0, got {}", options.max_tokens));

  SensitivityReport report;
  report.model_path = options.model_path.empty() ? default_model_path() : options.model_path;
  report.text_path = options.text_path.empty() ? default_text_path() : options.text_path;
  ContractModel model = load_model_file(report.model_path, options.tokenizer_path);
  const ModelMetadata& metadata = model.metadata();
  report.max_length = options.max_length == 0 ? metadata.max_length : options.max_length;
  if (report.max_length > metadata.max_length) {
    throw UsageError(fmt::format("--max-length {} exceeds the model's max_length {} ('{}')", report.max_length,
                                 metadata.max_length, report.model_path));
  }
  EvalText text = load_eval_text(report.text_path, model.tokenizer(), metadata.eos_token_id, report.max_length);
  if (options.max_tokens > 0 && static_cast<int64_t>(text.token_ids.size()) > options.max_tokens) {
    text.token_ids.resize(static_cast<size_t>(options.max_tokens));
    text.windows = cut_windows(text.token_ids, report.max_length);
  }
  const std::vector<EvalBatch> batches = make_batches(text.windows, options.mode, options.batch_size, metadata);

  const std::vector<LinearLayer> selected = select_layers(model.linear_layers(), options.include, options.exclude);
  SensitivityReport measured = measure_sensitivity(model, batches, selected, options.variant.config, options.keep, progress);
  measured.model_path = report.model_path;
  measured.text_path = report.text_path;
  measured.max_length = report.max_length;
  report = std::move(measured);
  report.model_sha256 = model.file_sha256();  // hashed while its integrity was verified
  report.text_sha256 = text.sha256;
  report.text_tokens = static_cast<int64_t>(text.token_ids.size());
  report.windows = static_cast<int64_t>(text.windows.size());
  report.max_tokens = options.max_tokens;
  report.variant = options.variant.name;
  report.mode = to_string(options.mode);
  report.batch_size = options.batch_size;
  report.threads = options.threads;
  report.include = options.include;
  report.exclude = options.exclude;
  report.seconds = std::chrono::duration<double>(Clock::now() - started).count();
  return report;
}

SensitivityReport measure_sensitivity(ContractModel& model, const std::vector<EvalBatch>& batches,
                                      const std::vector<LinearLayer>& selected, const QuantConfig& config,
                                      const std::vector<int64_t>& keep, const SensitivityProgress& progress) {
  for (const int64_t k : keep) {
    if (k < 0) throw UsageError(fmt::format("--keep values must be >= 0, got {}", k));
  }
  SensitivityReport report;
  WeightBackup backup(selected);
  // Puts the originals back however this function is left.
  struct RestoreOnExit {
    WeightBackup& backup;
    ~RestoreOnExit() {
      try {
        backup.restore();
      } catch (...) {
      }
    }
  } restore_on_exit{backup};
  const size_t n = backup.layers().size();
  report.tokens = count_label_tokens(batches);

  LayerSwitch layers(backup, config);

  // Phase 1: every single layer, all layers, each part.
  SubsetTable phase1;
  for (size_t i = 0; i < n; ++i) {
    Subset s(n, false);
    s[i] = true;
    phase1.add(s);
  }
  const size_t all_index = phase1.add(Subset(n, true));
  const std::vector<std::string> part_names{"encoder", "decoder", "lm_head"};
  std::vector<std::optional<size_t>> part_index;
  std::vector<int64_t> part_layers;
  for (const std::string& part : part_names) {
    Subset s(n, false);
    int64_t count = 0;
    for (size_t i = 0; i < n; ++i) {
      s[i] = part_of(backup.layers()[i].name) == part;
      count += s[i] ? 1 : 0;
    }
    part_layers.push_back(count);
    part_index.push_back(count > 0 ? std::optional<size_t>(phase1.add(s)) : std::nullopt);
  }
  SubsetSums fp32;
  const std::vector<SubsetSums> sums1 =
      evaluate_subsets(model, batches, layers, phase1.subsets(), &fp32, "single layers", progress);
  report.fp32_ppl = fp32.ppl();
  if (!std::isfinite(report.fp32_ppl)) {
    throw DataError(fmt::format("model '{}': the fp32 perplexity is not finite", model.path()));
  }
  report.all_quantized_ppl = sums1[all_index].ppl();
  report.all_quantized_delta_ppl_pct = delta_pct(report.all_quantized_ppl, report.fp32_ppl);
  report.all_quantized_kl_mean = sums1[all_index].kl_mean();

  // Ranking: most damaging first; ties keep the model's order (stable sort).
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sums1[a].ppl() > sums1[b].ppl(); });
  for (size_t r = 0; r < n; ++r) {
    const size_t i = order[r];
    LayerSensitivity l;
    l.name = backup.layers()[i].name;
    l.rank = static_cast<int64_t>(r + 1);
    l.parameters = backup.original(i).numel();
    l.ppl = sums1[i].ppl();
    l.delta_ppl_pct = delta_pct(l.ppl, report.fp32_ppl);
    l.kl_mean = sums1[i].kl_mean();
    report.layers.push_back(l);
  }
  for (size_t p = 0; p < part_names.size(); ++p) {
    PartResult part;
    part.part = part_names[p];
    part.layers = part_layers[p];
    if (part_index[p]) {
      const SubsetSums& s = sums1[*part_index[p]];
      part.ppl = s.ppl();
      part.delta_ppl_pct = delta_pct(s.ppl(), report.fp32_ppl);
      part.kl_mean = s.kl_mean();
    }
    report.parts.push_back(part);
  }

  // Phase 2: keep the K most damaging layers in fp32. Subsets already measured are not re-run.
  std::vector<int64_t> keep_values;
  for (const int64_t k : keep) keep_values.push_back(std::min<int64_t>(k, static_cast<int64_t>(n)));
  std::sort(keep_values.begin(), keep_values.end());
  keep_values.erase(std::unique(keep_values.begin(), keep_values.end()), keep_values.end());
  SubsetTable phase2;
  std::vector<size_t> keep_index;
  std::map<Subset, const SubsetSums*> known;
  for (size_t i = 0; i < phase1.subsets().size(); ++i) known.emplace(phase1.subsets()[i], &sums1[i]);
  const SubsetSums fp32_as_subset{fp32.nll_sum, fp32.tokens, 0.0};
  known.emplace(Subset(n, false), &fp32_as_subset);
  std::vector<Subset> keep_subsets;
  for (const int64_t k : keep_values) {
    Subset s(n, true);
    for (int64_t r = 0; r < k; ++r) s[order[static_cast<size_t>(r)]] = false;
    keep_subsets.push_back(s);
    if (known.count(s) == 0) keep_index.push_back(phase2.add(s));
    else keep_index.push_back(SIZE_MAX);
  }
  SubsetSums fp32_again;
  const std::vector<SubsetSums> sums2 =
      phase2.subsets().empty()
          ? std::vector<SubsetSums>{}
          : evaluate_subsets(model, batches, layers, phase2.subsets(), &fp32_again, "keep K", progress);
  for (size_t j = 0; j < keep_values.size(); ++j) {
    const SubsetSums& s = keep_index[j] == SIZE_MAX ? *known.at(keep_subsets[j]) : sums2[keep_index[j]];
    KeepResult kr;
    kr.keep = keep_values[j];
    for (int64_t r = 0; r < kr.keep; ++r) kr.kept_layers.push_back(report.layers[static_cast<size_t>(r)].name);
    kr.ppl = s.ppl();
    kr.delta_ppl_pct = delta_pct(kr.ppl, report.fp32_ppl);
    kr.kl_mean = s.kl_mean();
    report.keep.push_back(kr);
  }
  return report;
}

std::string format_sensitivity_json(const SensitivityReport& r) {
  ordered_json j;
  j["model"] = r.model_path;
  j["model_sha256"] = r.model_sha256;
  j["text"] = r.text_path;
  j["text_sha256"] = r.text_sha256;
  j["text_tokens"] = r.text_tokens;
  j["tokens"] = r.tokens;
  j["windows"] = r.windows;
  j["max_tokens"] = r.max_tokens > 0 ? ordered_json(r.max_tokens) : ordered_json(nullptr);
  j["variant"] = r.variant;
  j["mode"] = r.mode;
  j["max_length"] = r.max_length;
  j["batch_size"] = r.batch_size;
  j["threads"] = r.threads;
  j["include"] = r.include;
  j["exclude"] = r.exclude;
  j["fp32_ppl"] = r.fp32_ppl;
  j["all_quantized_ppl"] = r.all_quantized_ppl;
  j["all_quantized_delta_ppl_pct"] = r.all_quantized_delta_ppl_pct;
  j["all_quantized_kl_mean"] = r.all_quantized_kl_mean;
  j["layers"] = ordered_json::array();
  for (const LayerSensitivity& l : r.layers) {
    ordered_json o;
    o["name"] = l.name;
    o["rank"] = l.rank;
    o["parameters"] = l.parameters;
    o["ppl"] = l.ppl;
    o["delta_ppl_pct"] = l.delta_ppl_pct;
    o["kl_mean"] = l.kl_mean;
    j["layers"].push_back(o);
  }
  j["keep"] = ordered_json::array();
  for (const KeepResult& k : r.keep) {
    ordered_json o;
    o["keep"] = k.keep;
    o["kept_layers"] = k.kept_layers;
    o["ppl"] = k.ppl;
    o["delta_ppl_pct"] = k.delta_ppl_pct;
    o["kl_mean"] = k.kl_mean;
    j["keep"].push_back(o);
  }
  j["parts"] = ordered_json::array();
  for (const PartResult& p : r.parts) {
    ordered_json o;
    o["part"] = p.part;
    o["layers"] = p.layers;
    o["ppl"] = number_or_null(p.ppl);
    o["delta_ppl_pct"] = number_or_null(p.delta_ppl_pct);
    o["kl_mean"] = number_or_null(p.kl_mean);
    j["parts"].push_back(o);
  }
  j["seconds"] = r.seconds;
  return j.dump(2) + "\n";
}

std::string format_sensitivity_csv(const SensitivityReport& r) {
  std::ostringstream out;
  out << "rank,name,parameters,ppl,delta_ppl_pct,kl_mean,fp32_ppl,all_quantized_ppl,variant,model,model_sha256,text,"
         "text_sha256,tokens\n";
  for (const LayerSensitivity& l : r.layers) {
    const ordered_json cells = ordered_json::array({l.rank, l.name, l.parameters, l.ppl, l.delta_ppl_pct, l.kl_mean,
                                                    r.fp32_ppl, r.all_quantized_ppl, r.variant, r.model_path,
                                                    r.model_sha256, r.text_path, r.text_sha256, r.tokens});
    bool first = true;
    for (const auto& c : cells) {
      out << (first ? "" : ",") << csv_cell(c);
      first = false;
    }
    out << "\n";
  }
  return out.str();
}

std::string format_sensitivity_table(const SensitivityReport& r) {
  std::string out;
  out += fmt::format("model    {}  (sha256 {})\n", r.model_path, r.model_sha256.substr(0, 12));
  out += fmt::format("text     {}  (sha256 {}, {} tokens{}, {} windows of <= {}, mode {})\n", r.text_path,
                     r.text_sha256.substr(0, 12), r.text_tokens,
                     r.max_tokens > 0 ? fmt::format(" (--max-tokens {})", r.max_tokens) : "", r.windows, r.max_length,
                     r.mode);
  out += fmt::format("variant  {}: fp32 ppl {:.4f}, all {} layers quantized {:.4f} ({:+.3f}%, KL {:.3g})\n\n",
                     r.variant, r.fp32_ppl, r.layers.size(), r.all_quantized_ppl, r.all_quantized_delta_ppl_pct,
                     r.all_quantized_kl_mean);
  size_t width = 5;
  for (const LayerSensitivity& l : r.layers) width = std::max(width, l.name.size());
  out += fmt::format("{:>4}  {:<{}} {:>14} {:>10} {:>10}\n", "rank", "layer quantized alone", width, "perplexity",
                     "vs fp32", "KL mean");
  for (const LayerSensitivity& l : r.layers) {
    out += fmt::format("{:>4}  {:<{}} {:>14.4f} {:>+9.3f}% {:>10.3g}\n", l.rank, l.name, width, l.ppl,
                       l.delta_ppl_pct, l.kl_mean);
  }
  out += fmt::format("\n{:>6}  {:>14} {:>10} {:>10}   kept in fp32 (most damaging first)\n", "keep K", "perplexity",
                     "vs fp32", "KL mean");
  for (const KeepResult& k : r.keep) {
    std::string kept;
    for (size_t i = 0; i < k.kept_layers.size() && i < 4; ++i) kept += (i == 0 ? "" : ", ") + k.kept_layers[i];
    if (k.kept_layers.size() > 4) kept += fmt::format(", ... ({} more)", k.kept_layers.size() - 4);
    out += fmt::format("{:>6}  {:>14.4f} {:>+9.3f}% {:>10.3g}   {}\n", k.keep, k.ppl, k.delta_ppl_pct, k.kl_mean,
                       kept.empty() ? "-" : kept);
  }
  out += fmt::format("\n{:<8} {:>6} {:>14} {:>10} {:>10}   (only that part quantized)\n", "part", "layers",
                     "perplexity", "vs fp32", "KL mean");
  for (const PartResult& p : r.parts) {
    if (p.ppl) {
      out += fmt::format("{:<8} {:>6} {:>14.4f} {:>+9.3f}% {:>10.3g}\n", p.part, p.layers, *p.ppl, *p.delta_ppl_pct,
                         *p.kl_mean);
    } else {
      out += fmt::format("{:<8} {:>6} {:>14} {:>10} {:>10}\n", p.part, 0, "-", "-", "-");
    }
  }
  out += fmt::format("\n{} tokens predicted per run; KL is KL(P_fp32 || P_quantized) in nats per token.\n", r.tokens);
  return out;
}

}  // namespace quantppl
