#include "quantppl/output_file.h"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <ostream>
#include <streambuf>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "quantppl/error.h"

namespace quantppl {
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// Interrupts
// ---------------------------------------------------------------------------
// The handler may run on any thread (LibTorch's and OpenMP's included), at any
// instant. It touches only this static state, through lock-free atomics, and
// calls only async-signal-safe functions (unlink, write, _exit, pause).
namespace {

constexpr int kSlots = 8;
constexpr size_t kPathBytes = 4096;
enum SlotState : int { kFree = 0, kFilling = 1, kRegistered = 2 };

char g_paths[kSlots][kPathBytes];
std::atomic<int> g_slot_state[kSlots];
std::atomic<int> g_interrupted{0};
bool g_stderr_is_terminal = false;  // written once, before any signal can arrive
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs lock-free atomics");

void write_stderr(const char* s) {
  size_t left = std::strlen(s);
  while (left > 0) {
    const ssize_t n = ::write(STDERR_FILENO, s, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    s += n;
    left -= static_cast<size_t>(n);
  }
}

extern "C" void on_interrupt(int sig) {
  // A second signal (or the same one delivered to another thread) while the
  // first is being handled: the first thread is about to _exit.
  if (g_interrupted.exchange(1) != 0) {
    for (;;) ::pause();
  }
  for (int i = 0; i < kSlots; ++i) {
    if (g_slot_state[i].load(std::memory_order_acquire) == kRegistered) ::unlink(g_paths[i]);
  }
  if (g_stderr_is_terminal) write_stderr("\r\033[K");  // over the progress bar, as progress.cpp clears it
  write_stderr(sig == SIGINT ? "quantppl: interrupted (SIGINT)\n"
               : sig == SIGTERM ? "quantppl: interrupted (SIGTERM)\n"
                                : "quantppl: interrupted (SIGHUP)\n");
  ::_exit(128 + sig);
}

}  // namespace

void install_interrupt_handlers() {
  g_stderr_is_terminal = ::isatty(STDERR_FILENO) == 1;
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  for (const int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&action.sa_mask, sig);
  for (const int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;  // nohup, background job
    ::sigaction(sig, &action, nullptr);
  }
}

RemoveOnInterrupt::RemoveOnInterrupt(const std::string& path) : slot_(-1) {
  if (path.size() >= kPathBytes) return;
  for (int i = 0; i < kSlots; ++i) {
    int expected = kFree;
    if (g_slot_state[i].compare_exchange_strong(expected, kFilling)) {
      std::memcpy(g_paths[i], path.c_str(), path.size() + 1);
      g_slot_state[i].store(kRegistered, std::memory_order_release);
      slot_ = i;
      return;
    }
  }
}

RemoveOnInterrupt::~RemoveOnInterrupt() {
  if (slot_ >= 0) g_slot_state[slot_].store(kFree, std::memory_order_release);
}

TempFile create_temp_file(const std::string& prefix, const std::string& suffix, int mode) {
  std::random_device random;
  TempFile temp;
  for (int attempt = 0; attempt < 100; ++attempt) {
    temp.path = fmt::format("{}{:08x}{}", prefix, random(), suffix);
    temp.registration = std::make_unique<RemoveOnInterrupt>(temp.path);
    temp.fd = ::open(temp.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (temp.fd >= 0) return temp;
    temp.error = errno;
    temp.registration.reset();
    if (temp.error != EEXIST) return temp;
  }
  return temp;
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------
namespace {

// NAME_MAX of Linux file systems (ext4, xfs, btrfs, tmpfs): the longest file name, in bytes.
constexpr size_t kNameMax = 255;
constexpr size_t kTempTail = 5 + 8;  // ".tmp." + 8 hex digits

bool is_utf8_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

std::string file_name_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

fs::path directory_of(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

// "<path>.tmp." while that leaves room for the 8 hex digits within NAME_MAX; for a longer name
// (a valid 250-byte name would otherwise get a 263-byte temporary name and fail with
// ENAMETOOLONG) "<dir>/.<name cut on a UTF-8 character boundary>.tmp.".
std::string temp_prefix_beside(const std::string& path) {
  const std::string name = file_name_of(path);
  if (name.size() + kTempTail <= kNameMax) return path + ".tmp.";
  size_t keep = kNameMax - kTempTail - 1;  // the leading '.'
  while (keep > 0 && is_utf8_continuation(static_cast<unsigned char>(name[keep]))) --keep;
  return path.substr(0, path.size() - name.size()) + "." + name.substr(0, keep) + ".tmp.";
}

// An exclusively created, empty temporary file beside `path`, registered for removal on
// interrupt before it exists. Throws IoError naming `path`.
TempFile create_temp_file_beside(const std::string& path) {
  TempFile temp = create_temp_file(temp_prefix_beside(path), "", 0644);
  if (temp.fd >= 0) return temp;
  if (temp.error == EEXIST) throw IoError(fmt::format("cannot write '{}': no free temporary file name beside it", path));
  // The directory exists and is a directory (check_output_path); what is left is a file system
  // that refuses new files: read-only, full, or virtual (/proc answers ENOENT).
  throw IoError(fmt::format("cannot write '{}': directory '{}' does not accept new files ({})", path,
                            directory_of(path).string(), std::strerror(temp.error)));
}

// What a non-regular file is, for the message.
std::string kind_of(const struct stat& st, const std::string& path) {
  if (S_ISLNK(st.st_mode)) {
    std::error_code ec;
    const fs::path target = fs::read_symlink(path, ec);
    const bool dangling = !fs::exists(path, ec);
    return fmt::format("a symbolic link{} to '{}'", dangling ? " (dangling)" : "", ec ? "?" : target.string());
  }
  if (S_ISCHR(st.st_mode)) return "a character device";
  if (S_ISBLK(st.st_mode)) return "a block device";
  if (S_ISFIFO(st.st_mode)) return "a FIFO";
  if (S_ISSOCK(st.st_mode)) return "a socket";
  if (S_ISDIR(st.st_mode)) return "a directory";
  return "not a regular file";
}

// The destination as it is now: absent, or a regular file that `force` allows replacing.
void check_replaceable(const std::string& path, bool force) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw IoError(fmt::format("cannot write '{}': {}", path, std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    throw IoError(fmt::format("cannot write '{}': it is {}; only a regular file is ever replaced, even with --force",
                              path, kind_of(st, path)));
  }
  if (!force) throw IoError(fmt::format("'{}' already exists; pass --force to replace it", path));
}

// UsageError when `path` names the same file as one of `inputs`: the same device and inode when
// both exist (hard links, symlinks, "./x" vs "x"), else the same lexically resolved path.
void check_not_an_input(const std::string& path, const std::vector<std::string>& inputs) {
  struct stat out {};
  const bool out_exists = ::stat(path.c_str(), &out) == 0;
  std::error_code ec;
  const fs::path out_resolved = fs::weakly_canonical(fs::absolute(path, ec), ec);
  for (const std::string& input : inputs) {
    if (input.empty() || input == "-") continue;
    struct stat in {};
    bool same = false;
    if (out_exists && ::stat(input.c_str(), &in) == 0) {
      same = in.st_dev == out.st_dev && in.st_ino == out.st_ino;
    } else {
      std::error_code ec2;
      same = !out_resolved.empty() && fs::weakly_canonical(fs::absolute(input, ec2), ec2) == out_resolved;
    }
    if (same) {
      throw UsageError(fmt::format("cannot write '{}': it is the input '{}' of this run, which the result would "
                                   "replace; write it to another file", path, input));
    }
  }
}

// Closes and removes the temporary file, then throws IoError naming `path`.
[[noreturn]] void discard(TempFile& temp, const std::string& path, const std::string& what) {
  if (temp.fd >= 0) ::close(temp.fd);
  temp.fd = -1;
  ::unlink(temp.path.c_str());
  throw IoError(fmt::format("cannot write '{}': {}", path, what));
}

// fsync + close + rename over `path`; the temporary file is removed on any failure.
void commit(TempFile& temp, const std::string& path, bool force) {
  if (::fsync(temp.fd) != 0) discard(temp, path, std::strerror(errno));
  const int fd = temp.fd;
  temp.fd = -1;
  if (::close(fd) != 0) discard(temp, path, std::strerror(errno));
  // Again at the last moment: something may have appeared at the destination during the run.
  try {
    check_replaceable(path, force);
  } catch (const Error&) {
    ::unlink(temp.path.c_str());
    throw;
  }
  if (std::rename(temp.path.c_str(), path.c_str()) != 0) discard(temp, path, std::strerror(errno));
}

// A streambuf over a file descriptor that never reports a failure to its writer: the first
// failed write() is recorded (error()) and everything after it is swallowed. LibTorch's zip
// writer throws on a short write and then writes the end of the archive from its destructor,
// which throws again during unwinding and terminates the process; this way it finishes normally
// and the error is reported by the caller.
class FailureRecordingBuf : public std::streambuf {
 public:
  explicit FailureRecordingBuf(int fd) : fd_(fd), buffer_(1 << 20) { setp(buffer_.data(), buffer_.data() + buffer_.size()); }
  int error() const { return error_; }

 protected:
  int_type overflow(int_type c) override {
    flush_buffer();
    if (!traits_type::eq_int_type(c, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(c);
      pbump(1);
    }
    return traits_type::not_eof(c);
  }
  int sync() override {
    flush_buffer();
    return 0;
  }

 private:
  void flush_buffer() {
    const char* data = pbase();
    size_t left = static_cast<size_t>(pptr() - pbase());
    while (left > 0 && error_ == 0) {
      const ssize_t n = ::write(fd_, data, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        error_ = n < 0 ? errno : EIO;
        break;
      }
      data += n;
      left -= static_cast<size_t>(n);
    }
    setp(buffer_.data(), buffer_.data() + buffer_.size());
  }

  int fd_;
  std::vector<char> buffer_;
  int error_ = 0;
};

}  // namespace

std::string temp_directory() {
  const char* env = std::getenv("TMPDIR");
  const bool from_env = env != nullptr && *env != '\0';
  const std::string dir = from_env ? env : "/tmp";
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    const std::string why = ::stat(dir.c_str(), &st) != 0 ? std::strerror(errno) : "not a directory";
    throw IoError(from_env ? fmt::format("TMPDIR '{}' is not a usable directory ({}); set TMPDIR to an existing "
                                         "writable directory, or unset it to use /tmp", dir, why)
                           : fmt::format("the temporary directory '/tmp' is not usable ({}); set TMPDIR to an "
                                         "existing writable directory", why));
  }
  return dir;
}

void check_output_path(const std::string& path, bool force, const std::vector<std::string>& inputs) {
  if (path.empty()) throw UsageError("--output: empty path");
  const std::string name = file_name_of(path);
  if (name.size() > kNameMax) {
    throw IoError(fmt::format("cannot write '{}': its file name is {} bytes, longer than the {} a file system allows",
                              path, name.size(), kNameMax));
  }
  const fs::path dir = directory_of(path);
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    throw IoError(fmt::format("cannot write '{}': directory '{}' does not exist", path, dir.string()));
  }
  if (!fs::is_directory(dir, ec)) {
    throw IoError(fmt::format("cannot write '{}': '{}' is not a directory", path, dir.string()));
  }
  if (::access(dir.c_str(), W_OK) != 0) {
    throw IoError(fmt::format("cannot write '{}': directory '{}' is not writable", path, dir.string()));
  }
  check_not_an_input(path, inputs);
  check_replaceable(path, force);
  // Root passes access(W_OK) everywhere: only creating a file tells whether the directory takes one.
  TempFile probe = create_temp_file_beside(path);
  ::close(probe.fd);
  ::unlink(probe.path.c_str());
}

void write_file_atomically(const std::string& path, const std::string& content, bool force,
                           const std::vector<std::string>& inputs) {
  check_output_path(path, force, inputs);
  TempFile temp = create_temp_file_beside(path);
  const char* data = content.data();
  size_t left = content.size();
  while (left > 0) {
    const ssize_t n = ::write(temp.fd, data, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) discard(temp, path, n < 0 ? std::strerror(errno) : "the file system accepted no more bytes");
    data += n;
    left -= static_cast<size_t>(n);
  }
  commit(temp, path, force);
}

void write_stream_atomically(const std::string& path, bool force, const std::vector<std::string>& inputs,
                             const std::function<void(std::ostream& out)>& write) {
  check_output_path(path, force, inputs);
  TempFile temp = create_temp_file_beside(path);
  FailureRecordingBuf buffer(temp.fd);
  std::ostream out(&buffer);
  try {
    write(out);
    out.flush();
  } catch (...) {
    ::close(temp.fd);
    ::unlink(temp.path.c_str());
    throw;
  }
  if (buffer.error() != 0) discard(temp, path, std::strerror(buffer.error()));
  commit(temp, path, force);
}

}  // namespace quantppl
