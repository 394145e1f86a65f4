// The original values of the Linear weights a variant overwrites, kept once
// so that every variant starts from them and restore() puts them back
// bit-for-bit.
//
// Page faults dominate the cost of a backup on the machines this is developed
// on: every freshly touched 4 KiB page of anonymous memory costs ~10-30 us
// (../shared/notes/performance-measurements.md), so copying flan-t5-small's
// 242 MB of Linear weights costs ~60k faults, 0.7-1.8 s, while mapping the
// same bytes from the page cache costs ~0.2-0.5 us a page. And the original
// weights are already in the model file: a TorchScript archive is a zip whose
// members are stored uncompressed, each 64-byte aligned (PyTorchStreamWriter's
// guarantee), one member per tensor storage. Hence the storages below.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/contract_model.h"
#include "quantppl/enum_table.h"
#include "quantppl/formats/weight_format.h"

namespace quantppl {

// Where WeightBackup keeps the originals.
//   kModel:  no copy: read-only views of the model file the weights were
//            loaded from (LinearLayer::source_path), mapped from the page
//            cache. Used only when every layer's bytes are found in the
//            archive and compare equal to the loaded weight (checked once,
//            when the backup is made); otherwise the backup is made as kAuto
//            would without it. If the backup would not fit in memory (the
//            kAuto test below), a layer's pages are dropped from the resident
//            set after each use, as with kFile.
//            The file must not be rewritten in place while the backup lives
//            (replacing it by rename, as every quantppl writer and export
//            script does, is safe: the mapping keeps the old file).
//   kMemory: one contiguous tensor per layer in RAM.
//   kFile:   one temporary file (created in $TMPDIR, default /tmp, and
//            unlinked at once, so nothing is left behind even on a crash),
//            mapped read-only. A layer's pages are read in when it is used
//            and dropped from the process's resident set afterwards
//            (release()), so the backup costs page cache, which the kernel
//            can reclaim, not RSS. This is what lets a T5-XL-sized model
//            (11 GB of Linear weights) be evaluated in 24 GB without kModel.
//   kAuto:   kModel when possible, else kMemory if the backup plus 1 GiB of
//            headroom fits in MemAvailable (/proc/meminfo), else kFile.
enum class BackupStorage { kAuto, kMemory, kFile, kModel };
inline constexpr EnumTable<BackupStorage, 4> kBackupStorageNames{"weight backup", {{
    {BackupStorage::kAuto, "auto", "model when the weights are found in the model file, else memory when it fits in available RAM with 1 GiB to spare, else file"},
    {BackupStorage::kMemory, "memory", "one copy of the weights in RAM"},
    {BackupStorage::kFile, "file", "an unlinked temporary file in $TMPDIR, paged in per layer (models over half the RAM)"},
    {BackupStorage::kModel, "model", "no copy: read-only views of the model file the weights were loaded from"},
}}};
std::string to_string(BackupStorage storage);                 // kBackupStorageNames
BackupStorage parse_backup_storage(const std::string& name);  // UsageError naming --backup

// One copy (or one view) of every selected weight, made once.
class WeightBackup {
 public:
  explicit WeightBackup(std::vector<LinearLayer> layers, BackupStorage storage = BackupStorage::kMemory);
  ~WeightBackup();
  WeightBackup(const WeightBackup&) = delete;
  WeightBackup& operator=(const WeightBackup&) = delete;
  // Copies the originals back into the live weights (bit-for-bit).
  void restore();
  const std::vector<LinearLayer>& layers() const { return layers_; }
  // The original of layer i (in kFile and kModel storage a read-only view of
  // a mapping: writing to it faults).
  const torch::Tensor& original(size_t i) const { return originals_[i]; }
  // Done with original(i) for now: drop its pages from the resident set when
  // pages_dropped() (they are read back from the file on the next use).
  void release(size_t i) const;
  // kFile, and kModel for a backup that would not fit in memory.
  bool pages_dropped() const { return drop_pages_; }
  // summarize_weight(original(i)), read once on first use and kept (the
  // originals never change): every later variant's prepare_known skips that read.
  const WeightSummary& summary(size_t i) const;
  int64_t parameter_count() const;
  BackupStorage storage() const { return storage_; }  // never kAuto

 private:
  bool map_model_file();  // kModel: true if every layer was found in the archive
  void copy_to_memory();
  void write_temp_file();

  std::vector<LinearLayer> layers_;
  std::vector<torch::Tensor> originals_;
  mutable std::vector<std::optional<WeightSummary>> summaries_;  // summary(i), filled on first use
  BackupStorage storage_ = BackupStorage::kMemory;
  bool drop_pages_ = false;
  void* mapping_ = nullptr;  // kFile, kModel: the whole file, PROT_READ
  size_t mapping_bytes_ = 0;
};

}  // namespace quantppl
