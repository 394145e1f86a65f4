#include "quantppl/regular_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "quantppl/error.h"

namespace quantppl {
namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

}  // namespace

std::string format_bytes(int64_t bytes) {
  if (bytes < 1024) return fmt::format("{} bytes", bytes);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes) / 1024;
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.4g} {}", v, units[u]);
}

RegularFile::RegularFile(const std::string& path, const std::string& what, int64_t max_bytes) : path_(path), what_(what) {
  if (path.empty()) throw IoError(what + " path is empty");
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd_ < 0) throw IoError(fmt::format("cannot open {}: {}", describe(), std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    throw IoError(fmt::format("cannot read {}: {}", describe(), std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw IoError(fmt::format("{} is {}, expected a regular file", describe(), file_kind(st.st_mode)));
  }
  size_ = static_cast<int64_t>(st.st_size);
  if (size_ > max_bytes) {
    ::close(fd_);
    throw DataError(fmt::format("{} is {} bytes{}, more than the {} limit for a {}", describe(), size_,
                                size_ >= 1024 ? " (" + format_bytes(size_) + ")" : "", format_bytes(max_bytes), what));
  }
  // Back to blocking reads: O_NONBLOCK was only for the open of a FIFO, and regular files ignore it.
  ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::string RegularFile::describe() const { return what_ + " '" + path_ + "'"; }

void RegularFile::read_at(int64_t offset, void* buffer, size_t n) const {
  auto* out = static_cast<char*>(buffer);
  while (n > 0) {
    const ssize_t got = ::pread(fd_, out, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw IoError(fmt::format("cannot read {}: {}", describe(), std::strerror(errno)));
    if (got == 0) {
      throw DataError(fmt::format("{} ended at byte {}, before its {} bytes: it changed while being read", describe(),
                                  offset, size_));
    }
    out += got;
    offset += got;
    n -= static_cast<size_t>(got);
  }
}

std::string RegularFile::read_all() const {
  std::string bytes(static_cast<size_t>(size_), '\0');
  read_at(0, bytes.data(), bytes.size());
  return bytes;
}

std::string read_regular_file(const std::string& path, const std::string& what, int64_t max_bytes) {
  return RegularFile(path, what, max_bytes).read_all();
}

}  // namespace quantppl
