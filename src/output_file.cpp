#include "quantppl/output_file.h"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>

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

fs::path directory_of(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

// An exclusively created, empty temporary file beside `path` ("<path>.tmp.XXXXXXXX"), registered
// for removal on interrupt before it exists. Throws IoError naming `path`.
TempFile create_temp_file_beside(const std::string& path) {
  TempFile temp = create_temp_file(path + ".tmp.", "", 0644);
  if (temp.fd >= 0) return temp;
  if (temp.error == EEXIST) throw IoError(fmt::format("cannot write '{}': no free temporary file name beside it", path));
  // The directory exists and is a directory (check_output_path); what is left is a file system
  // that refuses new files: read-only, full, or virtual (/proc answers ENOENT).
  throw IoError(fmt::format("cannot write '{}': directory '{}' does not accept new files ({})", path,
                            directory_of(path).string(), std::strerror(temp.error)));
}

}  // namespace

void check_output_path(const std::string& path, bool force) {
  if (path.empty()) throw UsageError("--output: empty path");
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
  if (fs::is_directory(path, ec)) throw IoError(fmt::format("cannot write '{}': it is a directory", path));
  if (!force && fs::exists(path, ec)) {
    throw IoError(fmt::format("'{}' already exists; pass --force to replace it", path));
  }
  // Root passes access(W_OK) everywhere: only creating a file tells whether the directory takes one.
  TempFile probe = create_temp_file_beside(path);
  ::close(probe.fd);
  ::unlink(probe.path.c_str());
}

void write_file_atomically(const std::string& path, const std::string& content, bool force) {
  check_output_path(path, force);
  TempFile temp = create_temp_file_beside(path);
  const auto fail = [&](const std::string& what) {
    if (temp.fd >= 0) ::close(temp.fd);
    ::unlink(temp.path.c_str());
    throw IoError(fmt::format("cannot write '{}': {}", path, what));
  };
  const char* data = content.data();
  size_t left = content.size();
  while (left > 0) {
    const ssize_t n = ::write(temp.fd, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(std::strerror(errno));
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(temp.fd) != 0) fail(std::strerror(errno));
  const int fd = temp.fd;
  temp.fd = -1;
  if (::close(fd) != 0) fail(std::strerror(errno));
  if (!force && fs::exists(path)) fail("it appeared while writing; pass --force to replace it");
  if (std::rename(temp.path.c_str(), path.c_str()) != 0) fail(std::strerror(errno));
}

}  // namespace quantppl
