// Errors raised by the quantppl library.
//
// The library never exits and never prints: it throws one of these, and only
// main() decides what the user sees and which exit code the process returns.
// Messages state what was expected and what was found, and name the tensor,
// file, flag or layer involved ("--bits must be in [2, 8], got 9").
#pragma once

#include <stdexcept>
#include <string>

namespace quantppl {

// Base of every error the library throws on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
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
