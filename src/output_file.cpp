#include "quantppl/output_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "quantppl/error.h"

namespace quantppl {
namespace fs = std::filesystem;

namespace {

fs::path directory_of(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

}  // namespace

void check_output_path(const std::string& path, bool force) {
  if (path.empty()) throw UsageError("--output: empty path");
  const fs::path dir = directory_of(path);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw IoError(fmt::format("cannot write '{}': directory '{}' does not exist", path, dir.string()));
  }
  if (::access(dir.c_str(), W_OK) != 0) {
    throw IoError(fmt::format("cannot write '{}': directory '{}' is not writable", path, dir.string()));
  }
  if (fs::is_directory(path, ec)) throw IoError(fmt::format("cannot write '{}': it is a directory", path));
  if (!force && fs::exists(path, ec)) {
    throw IoError(fmt::format("'{}' already exists; pass --force to replace it", path));
  }
}

void write_file_atomically(const std::string& path, const std::string& content, bool force) {
  check_output_path(path, force);
  std::string temp = (directory_of(path) / (fs::path(path).filename().string() + ".tmp.XXXXXX")).string();
  const int fd = ::mkstemp(temp.data());
  if (fd < 0) throw IoError(fmt::format("cannot write '{}': {}", path, std::strerror(errno)));
  const auto fail = [&](const std::string& what) {
    ::close(fd);
    ::unlink(temp.c_str());
    throw IoError(fmt::format("cannot write '{}': {}", path, what));
  };
  const char* data = content.data();
  size_t left = content.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(std::strerror(errno));
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
  if (::fchmod(fd, 0644) != 0 || ::fsync(fd) != 0) fail(std::strerror(errno));
  if (::close(fd) != 0) {
    ::unlink(temp.c_str());
    throw IoError(fmt::format("cannot write '{}': {}", path, std::strerror(errno)));
  }
  if (!force && fs::exists(path)) {
    ::unlink(temp.c_str());
    throw IoError(fmt::format("'{}' already exists; pass --force to replace it", path));
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(temp.c_str());
    throw IoError(fmt::format("cannot write '{}': {}", path, why));
  }
}

}  // namespace quantppl
