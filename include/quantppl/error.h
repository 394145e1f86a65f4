// Errors raised by the quantppl library.
//
// The library never exits and never prints: it throws one of these, and only
// main() decides what the user sees and which exit code the process returns.
// Messages state what was expected and what was found, and name the tensor,
// file, flag or layer involved ("--bits must be in [2, 8], got 9").
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace quantppl {

// `message` with every control byte written as an escape: NUL as \0, newline
// as \n, carriage return as \r, the others (and DEL) as \xNN. A message
// quotes values from files and flags, which may hold any byte: escaped, it
// stays one line, is not cut at an embedded NUL (what() is a C string), and
// cannot move the terminal's cursor. Tabs and UTF-8 are kept.
std::string printable(std::string_view message);

// Base of every error the library throws on purpose. The message is stored
// through printable().
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(printable(message)) {}
  explicit Error(const char* message) : Error(std::string(message)) {}
};

// What the library is doing, for an error that cannot say it itself
// (std::bad_alloc: "out of memory while loading model 'x.pt'"). A scope names
// its activity; when an exception leaves the innermost scope, that scope's
// activity is kept as failed_activity() for main() to report. Per thread.
class ActivityScope {
 public:
  explicit ActivityScope(std::string activity);
  ~ActivityScope();
  ActivityScope(const ActivityScope&) = delete;
  ActivityScope& operator=(const ActivityScope&) = delete;
  // The innermost activity an exception left, or "" if none.
  static const std::string& failed_activity();

 private:
  int uncaught_at_entry_;
};

// The caller asked for something malformed: a bad flag value, a variant
// spec that does not parse, an option combination that makes no sense.
class UsageError : public Error {
 public:
  using Error::Error;
};

// The data is unusable: a weight holding NaN, a model file that is not a
// contract model, a text that does not decode.
class DataError : public Error {
 public:
  using Error::Error;
};

// Reading or writing a file failed.
class IoError : public Error {
 public:
  using Error::Error;
};

}  // namespace quantppl
