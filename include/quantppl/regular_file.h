// Opening an input file so that no input can hang or flood the process.
//
// Every file quantppl reads whole or hashes (a model, a .qpack, the source model a
// .qpack references, a --check file) goes through RegularFile, which
//   - opens with O_NONBLOCK, so that a FIFO opens at once instead of waiting forever for a writer,
//     then requires a regular file (fstat on the opened descriptor, not a second lookup of the
//     path): a FIFO, a socket or a device such as /dev/zero, whose "size" is 0 or infinite, is an
//     IoError (exit 4), like a directory;
//   - checks the size against a stated maximum for that kind of input BEFORE reading a byte: a
//     larger file is a DataError (exit 3) naming the file, its size and the limit.
// The limits are listed in docs/reliability.md ("Integrity verification and limits").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace quantppl {

// Largest model file (TorchScript archive or .qpack) quantppl reads: 64 GiB, 5x the largest T5
// (t5-11b, ~45 GB in float32 is above it; this tool evaluates small models on a CPU).
constexpr int64_t kMaxModelFileBytes = int64_t{64} << 30;
// Largest JSON file read whole (a --check file): 16 MiB (a real one is under 10 KiB).
constexpr int64_t kMaxJsonFileBytes = int64_t{16} << 20;

class RegularFile {
 public:
  // `what` names the kind of input in messages ("model", "--check file"). Throws IoError if the
  // file cannot be opened or is not a regular file, DataError if it is larger than `max_bytes`.
  RegularFile(const std::string& path, const std::string& what, int64_t max_bytes);
  ~RegularFile();
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;

  int fd() const { return fd_; }
  int64_t size() const { return size_; }  // as fstat() said at open
  const std::string& path() const { return path_; }
  // "model 'x.pt'"
  std::string describe() const;

  // Reads exactly `n` bytes at `offset` (pread; retries short reads and EINTR). IoError on a read
  // error; DataError if the file ends early (it shrank after it was opened).
  void read_at(int64_t offset, void* buffer, size_t n) const;
  std::string read_all() const;

 private:
  std::string path_;
  std::string what_;
  int fd_ = -1;
  int64_t size_ = 0;
};

// RegularFile(path, what, max_bytes).read_all().
std::string read_regular_file(const std::string& path, const std::string& what, int64_t max_bytes);

// "64 GiB", "16 MiB", "1.5 KiB", "200 bytes": sizes in messages.
std::string format_bytes(int64_t bytes);

}  // namespace quantppl
