// Writing result files so that a failure never leaves a partial file behind.
//
// The content goes to a temporary file in the destination's directory, is
// flushed, then rename()d over the destination (atomic on POSIX within one
// file system). An existing destination is replaced only with `force`.
#pragma once

#include <string>

namespace quantppl {

// Throws IoError naming the path: missing directory, not writable, exists
// without `force`, or a write failure (the temporary file is removed).
void write_file_atomically(const std::string& path, const std::string& content, bool force);

// Checks up front, before hours of work, that `path` could be written:
// the directory exists and is writable, and the file does not exist unless `force`.
void check_output_path(const std::string& path, bool force);

}  // namespace quantppl
