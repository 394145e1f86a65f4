#include "quantppl/compare.h"

#include <cmath>
#include <cstdlib>

#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "quantppl/contract_model.h"
#include "quantppl/error.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/sha256.h"
#include "quantppl/text_windows.h"

namespace quantppl {

const char* const kDefaultVariants = "fp32,absmax:8,zeropoint:8";

namespace {

std::string home() {
  const char* env = std::getenv("QUANTPPL_HOME");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(QUANTPPL_SOURCE_DIR);
}

std::string libtorch_version() {
  return fmt::format("{}.{}.{}", TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);
}

}  // namespace

std::string default_model_path() { return home() + "/models/default.pt"; }
std::string default_text_path() { return home() + "/data/default_eval.txt"; }

CompareReport run_compare(const CompareOptions& options, const CompareProgress& progress) {
  if (options.variants.empty()) throw UsageError("--variants: nothing to evaluate");
  if (options.batch_size <= 0) throw UsageError(fmt::format("--batch-size must be >= 1, got {}", options.batch_size));
  if (options.max_length < 0) throw UsageError(fmt::format("--max-length must be >= 0, got {}", options.max_length));

  CompareReport report;
  report.model_path = options.model_path.empty() ? default_model_path() : options.model_path;
  report.text_path = options.text_path.empty() ? default_text_path() : options.text_path;
  ContractModel model = ContractModel::load(report.model_path, options.tokenizer_path);
  const ModelMetadata& metadata = model.metadata();

  report.max_length = options.max_length == 0 ? metadata.max_length : options.max_length;
  if (report.max_length > metadata.max_length) {
    throw UsageError(fmt::format("--max-length {} exceeds the model's max_length {} ('{}')", report.max_length,
                                 metadata.max_length, report.model_path));
  }
  const EvalText text = load_eval_text(report.text_path, model.tokenizer(), metadata.eos_token_id, report.max_length);
  const std::vector<EvalBatch> batches = make_batches(text.windows, options.mode, options.batch_size, metadata);

  // Only the selected layers are backed up; the backup is made once.
  WeightBackup backup(select_layers(model.linear_layers(), options.include, options.exclude));

  report.mode = to_string(options.mode);
  report.batch_size = options.batch_size;
  report.threads = options.threads;
  report.include = options.include;
  report.exclude = options.exclude;
  report.layers_quantized = static_cast<int64_t>(backup.layers().size());
  report.parameters_quantized = backup.parameter_count();
  report.model_sha256 = sha256_file(report.model_path);
  report.text_sha256 = text.sha256;
  report.text_tokens = static_cast<int64_t>(text.token_ids.size());
  report.windows = static_cast<int64_t>(text.windows.size());
  report.libtorch_version = libtorch_version();
  report.quantppl_version = QUANTPPL_VERSION;

  std::optional<double> fp32_ppl;
  for (size_t i = 0; i < options.variants.size(); ++i) {
    const Variant& variant = options.variants[i];
    VariantResult result;
    result.variant = variant.name;
    result.is_fp32 = variant.is_fp32;
    const auto started = std::chrono::steady_clock::now();
    if (variant.is_fp32) {
      backup.restore();
    } else {
      const ModelQuantization q = apply_variant(backup, variant.config);
      result.weight_mse = q.total.mse();
      result.weight_sqnr_db = q.total.sqnr_db();
    }
    const PerplexityResult ppl = evaluate_perplexity(model, batches, [&](size_t done, size_t total) {
      if (progress) progress(variant.name, i, options.variants.size(), done, total);
    });
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    result.ppl = ppl.ppl();
    result.nll = ppl.mean_nll();
    result.tokens = ppl.tokens;
    if (variant.is_fp32 && !fp32_ppl) fp32_ppl = result.ppl;
    report.results.push_back(result);
  }
  backup.restore();
  if (fp32_ppl) {
    for (VariantResult& r : report.results) r.delta_ppl_pct = 100.0 * (r.ppl / *fp32_ppl - 1.0);
  }
  return report;
}

}  // namespace quantppl
