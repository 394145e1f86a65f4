// Fake-quantizing a model's Linear weights in place, and putting them back.
//
// A variant replaces every selected weight W by fake_quantize(W) (quantize.h)
// in place, under no-grad, so the scripted module runs unchanged. Between
// variants the originals come back bit-for-bit from a backup that is
// allocated once (one copy of the selected weights), not per variant.
// Each variant quantizes the *original* weights: restore() runs first.
#pragma once

#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/contract_model.h"
#include "quantppl/error_metrics.h"
#include "quantppl/quantize.h"

namespace quantppl {

// Layers whose name matches `include` and does not match `exclude`, matched
// anywhere in the name (a search, as RE2::PartialMatch; anchor with ^ and $).
// The patterns are RE2 syntax (https://github.com/google/re2/wiki/Syntax):
// what ECMAScript regexes have except backreferences (\1) and lookaround
// ((?=, (?!, (?<=). Matching takes time linear in the name whatever the
// pattern, and compiling one may use at most kMaxLayerPatternMemory. An empty
// pattern means "all" for include and "none" for exclude. Throws UsageError
// naming the flag for a pattern RE2 rejects, or when nothing is selected.
constexpr int64_t kMaxLayerPatternMemory = int64_t{8} << 20;
std::vector<LinearLayer> select_layers(const std::vector<LinearLayer>& layers, const std::string& include,
                                       const std::string& exclude);

// Where WeightBackup keeps the originals.
//   kMemory: one contiguous tensor per layer in RAM (fastest; the default
//            when it fits).
//   kFile:   one temporary file (created in $TMPDIR, default /tmp, and
//            unlinked at once, so nothing is left behind even on a crash),
//            mapped read-only. A layer's pages are read in when it is used
//            and dropped from the process's resident set afterwards
//            (release()), so the backup costs page cache, which the kernel
//            can reclaim, not RSS. This is what lets a T5-XL-sized model
//            (11 GB of Linear weights) be evaluated in 24 GB.
//   kAuto:   kMemory if the backup plus 1 GiB of headroom fits in
//            MemAvailable (/proc/meminfo), else kFile.
enum class BackupStorage { kAuto, kMemory, kFile };
std::string to_string(BackupStorage storage);           // "auto", "memory", "file"
BackupStorage parse_backup_storage(const std::string& name);  // UsageError naming --backup

// One copy of every selected weight, made once.
class WeightBackup {
 public:
  explicit WeightBackup(std::vector<LinearLayer> layers, BackupStorage storage = BackupStorage::kMemory);
  ~WeightBackup();
  WeightBackup(const WeightBackup&) = delete;
  WeightBackup& operator=(const WeightBackup&) = delete;
  // Copies the originals back into the live weights (bit-for-bit).
  void restore();
  const std::vector<LinearLayer>& layers() const { return layers_; }
  // The original of layer i (in kFile storage a read-only view of the
  // mapping: do not write to it).
  const torch::Tensor& original(size_t i) const { return originals_[i]; }
  // Done with original(i) for now: in kFile storage, drop its pages from the
  // resident set (they are re-read on the next use); in kMemory, nothing.
  void release(size_t i) const;
  int64_t parameter_count() const;
  BackupStorage storage() const { return storage_; }  // kMemory or kFile, never kAuto

 private:
  std::vector<LinearLayer> layers_;
  std::vector<torch::Tensor> originals_;
  BackupStorage storage_;
  void* mapping_ = nullptr;  // kFile: the whole file, PROT_READ
  size_t mapping_bytes_ = 0;
  std::vector<size_t> offsets_;  // kFile: byte offset of each layer (page aligned)
};

struct LayerQuantization {
  std::string name;
  QParams params;
  ErrorMetrics error;  // original vs fake-quantized weight
};

struct ModelQuantization {
  std::vector<LayerQuantization> layers;
  ErrorMetrics total;  // over every quantized weight element (sums, not a mean of means)
};

// Restores the originals, then fake-quantizes every backed-up layer in place.
ModelQuantization apply_variant(WeightBackup& backup, const QuantConfig& config);

// The parameters apply_variant would choose, per backed-up layer, computed
// once from the originals (the costly part for percentile and MSE ranges).
std::vector<QParams> choose_variant_params(const WeightBackup& backup, const QuantConfig& config);

// Writes fake_quantize(original) into every live weight with given
// parameters (fake_quantize_into: one read of the backup, one write of the
// weight, no separate restore), bit-identical with apply_variant.
void apply_variant_params(WeightBackup& backup, const QuantConfig& config, const std::vector<QParams>& params);

}  // namespace quantppl
