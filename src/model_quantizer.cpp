#include "quantppl/model_quantizer.h"

#include <memory>

#include <fmt/format.h>
#include <re2/re2.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/formats/uniform_format.h"
#include "quantppl/output_file.h"

namespace quantppl {
namespace {

// RE2 compiles a pattern into an automaton and matches in time linear in the
// name's length, whatever the pattern: no backtracking, so no pattern can
// hang a run ("(.*.*)*Z" under std::regex never finished), and its parser
// keeps its own stack, so deep nesting cannot overflow the call stack. Its
// memory is bounded by max_mem: a pattern whose program exceeds it is
// rejected when compiled, with the flag named.
std::unique_ptr<RE2> compile_pattern(const std::string& pattern, const char* flag) {
  RE2::Options options;
  options.set_log_errors(false);  // the error goes into the UsageError, not to stderr
  options.set_max_mem(kMaxLayerPatternMemory);
  auto re = std::make_unique<RE2>(pattern, options);
  if (!re->ok()) {
    const std::string why = re->error_code() == RE2::ErrorPatternTooLarge
                                ? fmt::format("it needs more than the {} MiB a pattern may use (too many or too "
                                              "deeply nested repetitions)", kMaxLayerPatternMemory >> 20)
                                : re->error();
    throw UsageError(fmt::format("{} '{}' is not a valid regular expression: {} (RE2 syntax: no backreferences "
                                 "or lookaround)", flag, pattern.size() > 200 ? pattern.substr(0, 200) + "..." : pattern,
                                 why));
  }
  return re;
}

}  // namespace

std::vector<LinearLayer> select_layers(const std::vector<LinearLayer>& layers, const std::string& include,
                                       const std::string& exclude) {
  const std::unique_ptr<RE2> include_re = compile_pattern(include, "--include");
  const std::unique_ptr<RE2> exclude_re = compile_pattern(exclude, "--exclude");
  std::vector<LinearLayer> selected;
  for (const LinearLayer& layer : layers) {
    if (!include.empty() && !RE2::PartialMatch(layer.name, *include_re)) continue;
    if (!exclude.empty() && RE2::PartialMatch(layer.name, *exclude_re)) continue;
    selected.push_back(layer);
  }
  if (selected.empty()) {
    throw UsageError(fmt::format("no Linear layer is selected by --include '{}' --exclude '{}' (the model has {}, e.g. '{}')",
                                 include, exclude, layers.size(), layers.empty() ? "" : layers.front().name));
  }
  return selected;
}

ModelQuantization apply_variant(WeightBackup& backup, const WeightFormat& format) {
  torch::NoGradGuard no_grad;
  ModelQuantization result;
  for (size_t i = 0; i < backup.layers().size(); ++i) {
    const LinearLayer& layer = backup.layers()[i];
    torch::Tensor weight = layer.weight;
    LayerQuantization lq;
    lq.name = layer.name;
    lq.prepared = format.prepare(backup.original(i), layer.name);
    lq.prepared->fake_quantize_into(backup.original(i), weight);
    lq.error = error_metrics(backup.original(i), weight);
    backup.release(i);
    result.total.merge(lq.error);
    result.layers.push_back(std::move(lq));
  }
  return result;
}

ModelQuantization apply_variant(WeightBackup& backup, const QuantConfig& config) {
  return apply_variant(backup, UniformFormat(config));
}

std::vector<std::unique_ptr<PreparedWeight>> prepare_variant(const WeightBackup& backup, const WeightFormat& format) {
  torch::NoGradGuard no_grad;
  std::vector<std::string> names;
  for (const LinearLayer& layer : backup.layers()) names.push_back(layer.name);
  // The backup's summaries (one read of each original for the whole run) spare
  // each variant's prepare() its own read where the format needs no more;
  // they are not computed for a format that does not use them.
  const bool known = format.uses_summaries();
  if (!backup.pages_dropped()) {
    std::vector<torch::Tensor> originals;
    std::vector<WeightSummary> summaries;
    for (size_t i = 0; i < backup.layers().size(); ++i) {
      originals.push_back(backup.original(i));
      if (known) summaries.push_back(backup.summary(i));
    }
    return format.prepare_many(originals, names, known ? &summaries : nullptr);
  }
  // Pages dropped after use: one layer resident at a time.
  std::vector<std::unique_ptr<PreparedWeight>> prepared;
  for (size_t i = 0; i < backup.layers().size(); ++i) {
    const torch::Tensor& w = backup.original(i);
    prepared.push_back(known ? format.prepare_known(w, names[i], backup.summary(i)) : format.prepare(w, names[i]));
    backup.release(i);
  }
  return prepared;
}

void apply_prepared(WeightBackup& backup, const std::vector<std::unique_ptr<PreparedWeight>>& prepared) {
  if (prepared.size() != backup.layers().size()) throw UsageError("apply_prepared: one PreparedWeight per layer expected");
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < prepared.size(); ++i) {
    torch::Tensor weight = backup.layers()[i].weight;
    prepared[i]->fake_quantize_into(backup.original(i), weight);
    backup.release(i);
  }
}

std::vector<QParams> choose_variant_params(const WeightBackup& backup, const QuantConfig& config) {
  const std::vector<std::unique_ptr<PreparedWeight>> prepared = prepare_variant(backup, UniformFormat(config));
  std::vector<QParams> params;
  for (const auto& p : prepared) params.push_back(static_cast<const UniformPreparedWeight&>(*p).params());
  return params;
}

void apply_variant_params(WeightBackup& backup, const QuantConfig& config, const std::vector<QParams>& params) {
  if (params.size() != backup.layers().size()) throw UsageError("apply_variant_params: one QParams per layer expected");
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    torch::Tensor weight = backup.layers()[i].weight;
    fake_quantize_into(backup.original(i), weight, params[i], config, backup.layers()[i].name);
    backup.release(i);
  }
}

int64_t prepared_packed_bytes(const WeightBackup& backup, const WeightFormat& format,
                              const std::vector<std::unique_ptr<PreparedWeight>>& prepared) {
  if (prepared.size() != backup.layers().size()) throw UsageError("prepared_packed_bytes: one PreparedWeight per layer expected");
  int64_t total = 0;
  for (size_t i = 0; i < prepared.size(); ++i) {
    const torch::Tensor& w = backup.layers()[i].weight;
    const std::optional<int64_t> exact = prepared[i]->packed_bytes();
    total += exact ? *exact : format.packed_bytes(w.size(0), w.size(1));
  }
  return total;
}

}  // namespace quantppl
