// A variant's weights whatever its method; see include/quantppl/methods/variant_methods.h.
#include "quantppl/methods/variant_methods.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <numeric>

#include <fmt/format.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/methods/method_weight.h"
#include "quantppl/model_quantizer.h"

namespace quantppl {

MethodChoice method_choice(const Variant& variant) {
  MethodChoice choice;
  choice.kind = variant.method;
  for (const MethodSpec& m : variant.methods) {
    for (const std::string& arg : m.args) {
      if (m.name == "gptq" && arg == "actorder") choice.gptq.act_order = true;
    }
  }
  if (choice.kind == MethodKind::kHqq) {
    // UsageError from zero_point_grid() when the format has a zero point HQQ cannot set (a range search).
    const ZeroPointGrid* grid = nullptr;
    try {
      grid = variant.format ? variant.format->zero_point_grid() : nullptr;
    } catch (const UsageError& e) {
      throw UsageError(fmt::format("variant '{}': {}", variant.name, e.what()));
    }
    if (grid == nullptr) {
      throw UsageError(fmt::format("variant '{}': hqq applies to zero-point grids (zeropoint:B:..., q4_1, q5_1), not '{}'",
                                   variant.name, variant.format ? variant.format->spec() : "fp32"));
    }
  }
  return choice;
}

bool variant_needs_calibration(const Variant& variant) {
  return !variant.is_fp32 && method_needs_calibration(variant.method);
}

std::string layer_block(const std::string& name) {
  size_t start = 0;
  while (start < name.size()) {
    size_t end = name.find('.', start);
    if (end == std::string::npos) end = name.size();
    const bool digits = end > start && std::all_of(name.begin() + static_cast<std::ptrdiff_t>(start),
                                                   name.begin() + static_cast<std::ptrdiff_t>(end),
                                                   [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    if (digits) return name.substr(0, end);
    start = end + 1;
  }
  return name;
}

MethodCalibration RunCalibration::view(ContractModel& model) const {
  MethodCalibration c;
  c.mode = mode;
  if (!active) return c;
  if (mode == CalibrationMode::kSequential) {
    c.model = &model;
    c.batches = &batches;
  } else {
    c.stats = &stats;
  }
  return c;
}

RunCalibration calibrate_for_run(ContractModel& model, const std::vector<LinearLayer>& layers,
                                 const std::vector<Variant>& variants, const MethodRunOptions& options, bool always) {
  RunCalibration run;
  run.mode = options.mode;
  const bool needed = std::any_of(variants.begin(), variants.end(), variant_needs_calibration);
  if (!needed && !always) return run;
  run.active = true;
  run.provenance.mode = std::string(kCalibrationModeNames.name(options.mode));
  if (options.mode == CalibrationMode::kSequential) {
    if (!options.request.stats_path.empty()) {
      throw UsageError("--calibration-mode sequential collects each block's statistics from the calibration text with "
                       "the earlier blocks quantized; it cannot use --calibration-stats (drop one of them)");
    }
    CalibrationInputs inputs = calibration_inputs_for_run(model, options.request, options.warn);
    run.batches = std::move(inputs.batches);
    run.provenance.text_path = inputs.text.path;
    run.provenance.text_sha256 = inputs.text.sha256;
    run.provenance.tokens = inputs.text.tokens;
    return run;
  }
  run.stats = calibration_stats_for_run(model, layers, options.request, options.warn, options.progress);
  run.provenance.text_path = run.stats.text_path;
  run.provenance.text_sha256 = run.stats.text_sha256;
  run.provenance.tokens = run.stats.tokens;
  run.provenance.stats_path = options.request.stats_path;
  return run;
}

namespace {

std::unique_ptr<PreparedWeight> wrap_result(LayerMethodResult& r, const torch::Tensor& original,
                                            const std::shared_ptr<const WeightFormat>& format, const std::string& name) {
  r.weight = torch::Tensor();  // W_hat (GPTQ: V's storage): the result below holds it, packed
  if (r.prepared) return std::move(r.prepared);  // HQQ: the format's own weight with HQQ's parameters
  std::unique_ptr<PreparedWeight> packer;
  if (r.parameter_source.defined()) {
    packer = format->prepare_from_groups(r.group_whole.contiguous(), r.parameter_source.contiguous(), name);
  } else if (r.input_scales.defined()) {
    // Parameters fixed from W diag(s) itself (not re-chosen from V when packing, as a lazily
    // prepared block format would).
    const torch::Tensor scaled = (original.to(torch::kFloat32) * r.input_scales.unsqueeze(0)).contiguous();
    packer = format->prepare_from_groups(scaled, scaled, name);
  } else {
    packer = format->prepare(original.contiguous(), name);
  }
  r.parameter_source = torch::Tensor();
  r.group_whole = torch::Tensor();
  return std::make_unique<MethodResultWeight>(std::move(r.format_weight), std::move(r.input_scales), std::move(packer),
                                              format, name);
}

LayerMethodReport report_of(const std::string& name, const LayerMethodResult& r) {
  LayerMethodReport report;
  report.name = name;
  report.relative_error = r.relative_error;
  report.rtn_relative_error = r.rtn_relative_error;
  report.awq_alpha = r.awq_alpha;
  report.hqq_iterations = r.hqq_iterations;
  return report;
}

// The layers apply_method must see together: AWQ scales the layers that share
// an input (their statistics' shared_input) by one s; every other method
// quantizes each layer on its own. In first-appearance order, layers in
// model order within a chunk, as apply_method groups them.
std::vector<std::vector<size_t>> method_chunks(const WeightBackup& backup, const CalibrationStats* stats,
                                               MethodKind kind) {
  const bool shared = kind == MethodKind::kAwq || kind == MethodKind::kAwqGptq;
  std::vector<std::vector<size_t>> chunks;
  std::map<int64_t, size_t> chunk_of;
  for (size_t i = 0; i < backup.layers().size(); ++i) {
    const LayerActivationStats* st =
        shared && stats != nullptr ? find_layer_stats(*stats, backup.layers()[i].name) : nullptr;
    if (st == nullptr || st->shared_input < 0) {
      chunks.push_back({i});
      continue;
    }
    const auto [it, inserted] = chunk_of.emplace(st->shared_input, chunks.size());
    if (inserted) chunks.emplace_back();
    chunks[it->second].push_back(i);
  }
  return chunks;
}

// apply_method on the backup's layers `indices` with their statistics (or none).
std::vector<LayerMethodResult> run_method(const WeightBackup& backup, const std::vector<size_t>& indices,
                                          const CalibrationStats* stats, const Variant& variant,
                                          const MethodChoice& choice) {
  std::vector<LayerToQuantize> layers;
  for (const size_t i : indices) {
    const std::string& name = backup.layers()[i].name;
    const LayerActivationStats* st = stats != nullptr ? find_layer_stats(*stats, name) : nullptr;
    layers.push_back({name, backup.original(i), st});
  }
  return apply_method(layers, *variant.format, choice);
}

}  // namespace

PreparedVariant prepare_method_variant(WeightBackup& backup, const Variant& variant,
                                       const MethodCalibration& calibration) {
  if (variant.is_fp32 || !variant.format) throw UsageError("prepare_method_variant: fp32 has no prepared weights");
  torch::NoGradGuard no_grad;
  const MethodChoice choice = method_choice(variant);
  const size_t n = backup.layers().size();
  PreparedVariant out;
  out.reports.resize(n);
  for (size_t i = 0; i < n; ++i) out.reports[i].name = backup.layers()[i].name;
  std::vector<size_t> all(n);  // every layer's index, for RTN's reports
  std::iota(all.begin(), all.end(), size_t{0});

  if (choice.kind == MethodKind::kRtn) {
    out.layers = prepare_variant(backup, *variant.format);
    if (calibration.stats != nullptr) {
      // e of RTN for reports (inspect): the method's e is RTN's.
      const std::vector<LayerMethodResult> r = run_method(backup, all, calibration.stats, variant, choice);
      for (size_t i = 0; i < n; ++i) out.reports[i] = report_of(backup.layers()[i].name, r[i]);
    }
    return out;
  }

  const bool calibrated = method_needs_calibration(choice.kind);
  out.layers.resize(n);
  const bool sequential = calibrated && calibration.mode == CalibrationMode::kSequential;
  if (!sequential) {
    if (calibrated && calibration.stats == nullptr) {
      throw UsageError(fmt::format("variant '{}' needs calibration statistics", variant.name));
    }
    // Chunk by chunk, each packed before the next: the method's float32
    // intermediates (W_hat, GPTQ's parameter source and copy of W: 8 to 16
    // bytes a weight) then live for one chunk, not for every layer at once.
    for (const std::vector<size_t>& chunk : method_chunks(backup, calibration.stats, choice.kind)) {
      std::vector<LayerMethodResult> r = run_method(backup, chunk, calibration.stats, variant, choice);
      for (size_t k = 0; k < chunk.size(); ++k) {
        const size_t i = chunk[k];
        out.reports[i] = report_of(backup.layers()[i].name, r[k]);
        out.layers[i] = wrap_result(r[k], backup.original(i), variant.format, backup.layers()[i].name);
        backup.release(i);
      }
    }
    return out;
  }

  if (calibration.model == nullptr || calibration.batches == nullptr || calibration.batches->empty()) {
    throw UsageError(fmt::format("variant '{}': sequential calibration needs the model and calibration text", variant.name));
  }
  // Blocks in model order (first appearance).
  std::vector<std::vector<size_t>> blocks;
  std::map<std::string, size_t> block_of;
  for (size_t i = 0; i < n; ++i) {
    const auto [it, inserted] = block_of.emplace(layer_block(backup.layers()[i].name), blocks.size());
    if (inserted) blocks.emplace_back();
    blocks[it->second].push_back(i);
  }
  backup.restore();
  try {
    for (size_t b = 0; b < blocks.size(); ++b) {
      std::vector<std::string> names;
      for (const size_t i : blocks[b]) names.push_back(backup.layers()[i].name);
      // The inputs of this block with every earlier block quantized (the live weights).
      const CalibrationStats stats = collect_calibration_stats(*calibration.model, names, *calibration.batches);
      std::vector<LayerMethodResult> r = run_method(backup, blocks[b], &stats, variant, choice);
      for (size_t k = 0; k < blocks[b].size(); ++k) {
        const size_t i = blocks[b][k];
        out.reports[i] = report_of(backup.layers()[i].name, r[k]);
        backup.layers()[i].weight.copy_(r[k].weight);
        out.layers[i] = wrap_result(r[k], backup.original(i), variant.format, backup.layers()[i].name);
        backup.release(i);
      }
      if (calibration.progress) calibration.progress(b + 1, blocks.size());
    }
  } catch (...) {
    backup.restore();
    throw;
  }
  backup.restore();
  return out;
}

}  // namespace quantppl
