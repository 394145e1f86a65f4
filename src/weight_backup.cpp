#include "quantppl/weight_backup.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string_view>
#include <unordered_map>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/output_file.h"

namespace quantppl {
namespace {

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

// Whether a backup of `bytes` can live in RAM: it plus 1 GiB of headroom (activations, logits,
// allocator slack) fits in MemAvailable, or MemAvailable is unknown.
bool fits_in_memory(int64_t bytes) {
  const int64_t available = available_memory_bytes();
  constexpr int64_t kHeadroom = int64_t{1} << 30;
  return available == 0 || bytes + kHeadroom <= available;
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

int64_t weight_bytes(const std::vector<LinearLayer>& layers) {
  int64_t bytes = 0;
  for (const LinearLayer& layer : layers) bytes += layer.weight.numel() * layer.weight.element_size();
  return bytes;
}

// Byte offsets of the members of a TorchScript archive, or {} when it cannot be read as one.
std::vector<size_t> archive_member_offsets(const std::string& path) {
  std::vector<size_t> offsets;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    for (const std::string& name : reader.getAllRecords()) offsets.push_back(reader.getRecordOffset(name));
  } catch (const c10::Error&) {
    return {};
  }
  return offsets;
}

}  // namespace

std::string to_string(BackupStorage storage) { return std::string(kBackupStorageNames.name(storage)); }

BackupStorage parse_backup_storage(const std::string& name) { return kBackupStorageNames.parse(name, "--backup"); }

WeightBackup::WeightBackup(std::vector<LinearLayer> layers, BackupStorage storage) : layers_(std::move(layers)) {
  torch::NoGradGuard no_grad;
  if ((storage == BackupStorage::kAuto || storage == BackupStorage::kModel) && map_model_file()) return;
  if (storage == BackupStorage::kMemory ||
      (storage != BackupStorage::kFile && fits_in_memory(weight_bytes(layers_)))) {
    copy_to_memory();
  } else {
    write_temp_file();
  }
}

WeightBackup::~WeightBackup() {
  originals_.clear();
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_bytes_);
}

void WeightBackup::copy_to_memory() {
  storage_ = BackupStorage::kMemory;
  originals_.reserve(layers_.size());
  for (const LinearLayer& layer : layers_) {
    originals_.push_back(layer.weight.detach().clone(torch::MemoryFormat::Contiguous));
  }
}

void WeightBackup::write_temp_file() {
  // Layers laid out page-aligned (so release() drops exactly one layer's pages), written with
  // pwrite (no mapping of dirty pages), then the file is mapped read-only.
  storage_ = BackupStorage::kFile;
  drop_pages_ = true;
  std::vector<size_t> offsets;
  size_t total = 0;
  for (const LinearLayer& layer : layers_) {
    offsets.push_back(total);
    total += round_up_to_page(static_cast<size_t>(layer.weight.numel() * layer.weight.element_size()));
  }
  const int fd = unlinked_temp_file();
  for (size_t i = 0; i < layers_.size(); ++i) {
    const torch::Tensor w = layers_[i].weight.detach().contiguous();
    write_all(fd, static_cast<const char*>(w.data_ptr()), static_cast<size_t>(w.numel() * w.element_size()),
              offsets[i]);
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
    originals_.push_back(torch::from_blob(static_cast<char*>(mapping_) + offsets[i], w.sizes(), w.options()));
  }
}

bool WeightBackup::map_model_file() {
  if (layers_.empty()) return false;
  const std::string& path = layers_.front().source_path;
  for (const LinearLayer& layer : layers_) {
    if (layer.source_path.empty() || layer.source_path != path || !layer.weight.is_contiguous() ||
        layer.weight.numel() == 0) {
      return false;
    }
  }
  const std::vector<size_t> members = archive_member_offsets(path);
  if (members.empty()) return false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  void* mapping = MAP_FAILED;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    mapping = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  }
  ::close(fd);  // the mapping keeps the file alive (and the file it was, even if renamed over)
  if (mapping == MAP_FAILED) return false;
  const char* base = static_cast<const char*>(mapping);
  const size_t file_bytes = static_cast<size_t>(st.st_size);

  // Every tensor storage is one archive member, the storage's bytes from the member's first byte.
  // Members are found by their first 16 bytes, then every candidate is compared in full: a backup
  // is right exactly when its bytes equal the weight's, whichever member holds them.
  constexpr size_t kKey = 16;
  std::unordered_multimap<std::string_view, size_t> by_prefix;
  for (const size_t offset : members) {
    if (offset <= file_bytes && file_bytes - offset >= kKey) by_prefix.emplace(std::string_view(base + offset, kKey), offset);
  }
  std::vector<const char*> found;
  for (const LinearLayer& layer : layers_) {
    const torch::Tensor& w = layer.weight;
    const size_t element = static_cast<size_t>(w.element_size());
    const size_t bytes = static_cast<size_t>(w.numel()) * element;
    const size_t within = static_cast<size_t>(w.storage_offset()) * element;  // weight's first byte in its storage
    const char* storage_begin = static_cast<const char*>(w.data_ptr()) - within;
    const char* match = nullptr;
    if (within + bytes >= kKey) {
      const auto range = by_prefix.equal_range(std::string_view(storage_begin, kKey));
      for (auto it = range.first; it != range.second && match == nullptr; ++it) {
        const size_t at = it->second + within;
        if (at <= file_bytes && file_bytes - at >= bytes && std::memcmp(base + at, w.data_ptr(), bytes) == 0) {
          match = base + at;
        }
      }
    }
    if (match == nullptr) {
      ::munmap(mapping, file_bytes);
      return false;
    }
    found.push_back(match);
  }
  storage_ = BackupStorage::kModel;
  drop_pages_ = !fits_in_memory(weight_bytes(layers_));
  mapping_ = mapping;
  mapping_bytes_ = file_bytes;
  originals_.reserve(layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    const torch::Tensor& w = layers_[i].weight;
    // from_blob wants a mutable pointer; the pages are PROT_READ, so a write would fault, not corrupt.
    originals_.push_back(torch::from_blob(const_cast<char*>(found[i]), w.sizes(), w.options()));
  }
  return true;
}

void WeightBackup::release(size_t i) const {
  if (!drop_pages_) return;
  // On a shared file mapping, MADV_DONTNEED only unmaps the pages from this process: the data
  // stays in the file and the page cache, and the next access reads it back. Only the pages
  // wholly inside the layer are dropped (kModel layers are 64-byte, not page, aligned).
  const uintptr_t begin = reinterpret_cast<uintptr_t>(originals_[i].data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(originals_[i].numel() * originals_[i].element_size());
  const uintptr_t first = (begin + kPage - 1) / kPage * kPage;
  const uintptr_t last = end / kPage * kPage;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

void WeightBackup::restore() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < layers_.size(); ++i) {
    layers_[i].weight.copy_(originals_[i]);
    release(i);
  }
}

const WeightSummary& WeightBackup::summary(size_t i) const {
  if (summaries_.size() != originals_.size()) summaries_.resize(originals_.size());
  std::optional<WeightSummary>& s = summaries_.at(i);
  if (!s) s = summarize_weight(originals_[i]);
  return *s;
}

int64_t WeightBackup::parameter_count() const {
  int64_t n = 0;
  for (const torch::Tensor& t : originals_) n += t.numel();
  return n;
}

}  // namespace quantppl
