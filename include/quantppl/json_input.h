// Reading JSON that came from a file: the one reader behind quantppl.json (model_metadata.h),
// the --check file (regression_check.h) and the .qpack header (packed_model.h).
//
// Bounded: the text is at most the caller's size limit (read_json_file reads regular files only,
// regular_file.h), and nesting deeper than kMaxJsonDepth arrays/objects is rejected by a pre-scan
// before nlohmann parses it. Its parser is iterative, but a document nested 100 000 deep would
// still be printed (dump) and compared recursively and overflow the stack; no quantppl file nests
// deeper than 4.
//
// Every failure is a DataError whose message starts with the source ("model 'm.pt':
// quantppl.json", "--check file 'c.json'", "packed model 'p.qpack': header") and names the field
// by its path ("layers[3].codes.bits") with what was expected and what was found:
//   model 'm.pt': quantppl.json: field 'vocab_size' must be an integer, got "384"
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace quantppl {

constexpr int kMaxJsonDepth = 64;

// Parses `text` (DataError "<source>: not valid JSON: ...", or "... nested deeper than 64 levels").
nlohmann::json parse_json(std::string_view text, const std::string& source);
// The same for a whole file: RegularFile(path, what, max_bytes), then parse_json with source
// "<what> '<path>'".
nlohmann::json read_json_file(const std::string& path, const std::string& what, int64_t max_bytes);

// Typed access to the fields of a parsed document. `field` arguments are the path of the object
// the key is looked up in ("" at the top level, "layers[3]", "source_model"); messages name
// "<field>.<key>".
class JsonReader {
 public:
  explicit JsonReader(std::string source) : source_(std::move(source)) {}
  const std::string& source() const { return source_; }

  [[noreturn]] void fail(const std::string& field, const std::string& what) const;
  // The value shown in a message: compact JSON, cut to 60 characters.
  static std::string shown(const nlohmann::json& value);
  static std::string join(const std::string& field, const std::string& key) {
    return field.empty() ? key : field + "." + key;
  }

  // The document must be an object ("expected a JSON object, got a JSON array").
  void require_object(const nlohmann::json& value, const std::string& field) const;
  bool has(const nlohmann::json& object, const std::string& key) const;
  // "missing field 'x'"
  const nlohmann::json& member(const nlohmann::json& object, const std::string& key, const std::string& field = "") const;
  // An integer (1.0 and true are not) in [lo, hi].
  int64_t integer(const nlohmann::json& object, const std::string& key, const std::string& field = "",
                  int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const;
  int64_t integer_value(const nlohmann::json& value, const std::string& name, int64_t lo = INT64_MIN,
                        int64_t hi = INT64_MAX) const;
  // Any finite JSON number in [lo, hi].
  double number(const nlohmann::json& object, const std::string& key, const std::string& field = "",
                double lo = -1e308, double hi = 1e308) const;
  std::string string(const nlohmann::json& object, const std::string& key, const std::string& field = "") const;
  bool boolean(const nlohmann::json& object, const std::string& key, const std::string& field = "") const;
  const nlohmann::json& object(const nlohmann::json& object, const std::string& key, const std::string& field = "") const;
  const nlohmann::json& array(const nlohmann::json& object, const std::string& key, const std::string& field = "") const;

 private:
  std::string source_;
};

}  // namespace quantppl
