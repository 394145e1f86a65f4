#include "quantppl/model_quantizer.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>
#include <re2/re2.h>
#include <torch/torch.h>

#include "quantppl/error.h"
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

constexpr size_t kPage = 4096;

size_t round_up_to_page(size_t n) { return (n + kPage - 1) / kPage * kPage; }

// MemAvailable from /proc/meminfo in bytes, or 0 if unknown.
int64_t available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

BackupStorage resolve(BackupStorage storage, int64_t backup_bytes) {
  if (storage != BackupStorage::kAuto) return storage;
  const int64_t available = available_memory_bytes();
  constexpr int64_t kHeadroom = int64_t{1} << 30;  // activations, logits, allocator slack
  return available == 0 || backup_bytes + kHeadroom <= available ? BackupStorage::kMemory : BackupStorage::kFile;
}

// A temporary file in $TMPDIR (default /tmp), unlinked at once; returns its descriptor.
int unlinked_temp_file() {
  std::string dir;
  try {
    dir = temp_directory();
  } catch (const IoError& e) {
    throw IoError(fmt::format("cannot create the weight backup file: {}; or use --backup memory", e.what()));
  }
  std::string path = dir + "/quantppl-backup-XXXXXX";
  const int fd = ::mkstemp(path.data());
  if (fd < 0) {
    throw IoError(fmt::format("cannot create the weight backup file {}: {} (set TMPDIR to a writable directory, "
                              "or use --backup memory)", path, std::strerror(errno)));
  }
  ::unlink(path.c_str());
  return fd;
}

void write_all(int fd, const char* data, size_t bytes, size_t offset) {
  while (bytes > 0) {
    const ssize_t n = ::pwrite(fd, data, bytes, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      throw IoError(fmt::format("cannot write the weight backup file in $TMPDIR: {} (free disk space, set TMPDIR, "
                                "or use --backup memory)", std::strerror(err)));
    }
    data += n;
    bytes -= static_cast<size_t>(n);
    offset += static_cast<size_t>(n);
  }
}

}  // namespace

std::string to_string(BackupStorage storage) {
  switch (storage) {
    case BackupStorage::kAuto:
      return "auto";
    case BackupStorage::kMemory:
      return "memory";
    case BackupStorage::kFile:
      return "file";
  }
  return "?";
}

BackupStorage parse_backup_storage(const std::string& name) {
  if (name == "auto") return BackupStorage::kAuto;
  if (name == "memory") return BackupStorage::kMemory;
  if (name == "file") return BackupStorage::kFile;
  throw UsageError(fmt::format("--backup '{}': expected auto, memory or file", name));
}

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

WeightBackup::WeightBackup(std::vector<LinearLayer> layers, BackupStorage storage) : layers_(std::move(layers)) {
  torch::NoGradGuard no_grad;
  int64_t bytes = 0;
  for (const LinearLayer& layer : layers_) bytes += layer.weight.numel() * layer.weight.element_size();
  storage_ = resolve(storage, bytes);
  originals_.reserve(layers_.size());
  if (storage_ == BackupStorage::kMemory) {
    for (const LinearLayer& layer : layers_) {
      originals_.push_back(layer.weight.detach().clone(torch::MemoryFormat::Contiguous));
    }
    return;
  }
  // kFile: lay the layers out page-aligned (so release() can drop exactly one layer's pages),
  // write them with pwrite (no mapping of dirty pages), then map the file read-only.
  size_t total = 0;
  for (const LinearLayer& layer : layers_) {
    offsets_.push_back(total);
    total += round_up_to_page(static_cast<size_t>(layer.weight.numel() * layer.weight.element_size()));
  }
  const int fd = unlinked_temp_file();
  for (size_t i = 0; i < layers_.size(); ++i) {
    const torch::Tensor w = layers_[i].weight.detach().contiguous();
    write_all(fd, static_cast<const char*>(w.data_ptr()), static_cast<size_t>(w.numel() * w.element_size()),
              offsets_[i]);
  }
  void* mapping = total == 0 ? nullptr : ::mmap(nullptr, total, PROT_READ, MAP_SHARED, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the (unlinked) file alive
  if (mapping == MAP_FAILED) {
    throw IoError(fmt::format("cannot map the weight backup file: {}", std::strerror(map_errno)));
  }
  mapping_ = mapping;
  mapping_bytes_ = total;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const torch::Tensor& w = layers_[i].weight;
    originals_.push_back(torch::from_blob(static_cast<char*>(mapping_) + offsets_[i], w.sizes(), w.options()));
  }
}

WeightBackup::~WeightBackup() {
  originals_.clear();
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_bytes_);
}

void WeightBackup::release(size_t i) const {
  if (storage_ != BackupStorage::kFile) return;
  const size_t bytes = round_up_to_page(static_cast<size_t>(originals_[i].numel() * originals_[i].element_size()));
  // On a shared file mapping, MADV_DONTNEED only unmaps the pages from this process: the data
  // stays in the file and the page cache, and the next access reads it back.
  ::madvise(static_cast<char*>(mapping_) + offsets_[i], bytes, MADV_DONTNEED);
}

void WeightBackup::restore() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < layers_.size(); ++i) {
    layers_[i].weight.copy_(originals_[i]);
    release(i);
  }
}

int64_t WeightBackup::parameter_count() const {
  int64_t n = 0;
  for (const torch::Tensor& t : originals_) n += t.numel();
  return n;
}

ModelQuantization apply_variant(WeightBackup& backup, const QuantConfig& config) {
  validate(config);
  torch::NoGradGuard no_grad;
  ModelQuantization result;
  for (size_t i = 0; i < backup.layers().size(); ++i) {
    const LinearLayer& layer = backup.layers()[i];
    torch::Tensor weight = layer.weight;
    LayerQuantization lq;
    lq.name = layer.name;
    lq.params = choose_qparams(backup.original(i), config, layer.name);
    fake_quantize_into(backup.original(i), weight, lq.params, config, layer.name);
    lq.error = error_metrics(backup.original(i), weight);
    backup.release(i);
    result.total.merge(lq.error);
    result.layers.push_back(std::move(lq));
  }
  return result;
}

std::vector<QParams> choose_variant_params(const WeightBackup& backup, const QuantConfig& config) {
  std::vector<std::string> names;
  for (const LinearLayer& layer : backup.layers()) names.push_back(layer.name);
  if (backup.storage() == BackupStorage::kMemory) {
    std::vector<torch::Tensor> originals;
    for (size_t i = 0; i < backup.layers().size(); ++i) originals.push_back(backup.original(i));
    return choose_qparams_many(originals, config, names);
  }
  // kFile: one layer resident at a time.
  std::vector<QParams> params;
  for (size_t i = 0; i < backup.layers().size(); ++i) {
    params.push_back(choose_qparams(backup.original(i), config, names[i]));
    backup.release(i);
  }
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

}  // namespace quantppl
