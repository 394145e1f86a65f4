#include "quantppl/input_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "quantppl/error.h"

namespace quantppl {
namespace {

std::string mib(int64_t bytes) { return fmt::format("{} MiB", bytes >> 20); }

const char* file_type_name(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ > STDERR_FILENO) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

std::string input_display_name(const std::string& path, const InputKind& kind) {
  return kind.allow_stdin && path == "-" ? std::string("<stdin>") : "'" + path + "'";
}

std::string read_input_file(const std::string& path, const InputKind& kind,
                            const std::function<void(std::string_view, size_t)>& check_block) {
  const bool is_stdin = kind.allow_stdin && path == "-";
  const std::string name = std::string(kind.what) + " " + input_display_name(path, kind);
  if (path.empty()) throw IoError(fmt::format("{}: empty path", kind.what));
  const int raw = is_stdin ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (raw < 0) throw IoError(fmt::format("cannot open {}: {}", name, std::strerror(errno)));
  const Fd fd(raw);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw IoError(fmt::format("cannot open {}: {}", name, std::strerror(errno)));
  if (!is_stdin) {
    if (!S_ISREG(st.st_mode)) {
      throw IoError(fmt::format("{} is {}, expected a regular file{}", name, file_type_name(st.st_mode),
                                S_ISDIR(st.st_mode) ? "" : " (devices, FIFOs and sockets are not read)"));
    }
    // Back to blocking reads: O_NONBLOCK only kept open() itself from waiting on a FIFO.
    ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) & ~O_NONBLOCK);
  }
  if (S_ISREG(st.st_mode) && st.st_size > kind.max_bytes) {
    throw DataError(fmt::format("{} is {} bytes, more than the {} maximum for a {}", name, st.st_size,
                                mib(kind.max_bytes), kind.what));
  }
  std::string data;
  if (S_ISREG(st.st_mode)) data.reserve(static_cast<size_t>(st.st_size));
  std::string block(size_t{1} << 16, '\0');
  for (;;) {
    const ssize_t n = ::read(fd.get(), block.data(), block.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw IoError(fmt::format("cannot read {}: {}", name, std::strerror(errno)));
    if (n == 0) break;
    // One byte beyond the maximum is enough to know: never hold more than max + one block.
    if (static_cast<int64_t>(data.size()) + n > kind.max_bytes) {
      throw DataError(fmt::format("{} is longer than the {} maximum for a {}", name, mib(kind.max_bytes), kind.what));
    }
    const size_t from = data.size();
    data.append(block.data(), static_cast<size_t>(n));
    if (check_block) check_block(data, from);
  }
  return data;
}

}  // namespace quantppl
