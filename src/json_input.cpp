#include "quantppl/json_input.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "quantppl/error.h"
#include "quantppl/regular_file.h"

namespace quantppl {

using nlohmann::json;

namespace {

// The deepest nesting of arrays and objects outside strings. A linear scan that does not
// validate: whatever is not JSON is left for the parser to report.
int64_t nesting_depth(std::string_view text) {
  int64_t depth = 0;
  int64_t deepest = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > kMaxJsonDepth) return deepest;  // enough to reject; don't scan on
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

}  // namespace

json parse_json(std::string_view text, const std::string& source) {
  if (nesting_depth(text) > kMaxJsonDepth) {
    throw DataError(fmt::format("{}: not valid JSON: arrays/objects nested deeper than {} levels", source, kMaxJsonDepth));
  }
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for a number beyond double's range ("1e999", found by
    // fuzz/metadata_fuzz.cpp). nlohmann's message starts "[json.exception.parse_error.101] ...".
    std::string what = e.what();
    if (const auto p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
    throw DataError(source + ": not valid JSON: " + what.substr(0, what.find('\n')));
  }
}

json read_json_file(const std::string& path, const std::string& what, int64_t max_bytes) {
  const RegularFile file(path, what, max_bytes);
  return parse_json(file.read_all(), file.describe());
}

void JsonReader::fail(const std::string& field, const std::string& what) const {
  throw DataError(fmt::format("{}: field '{}' {}", source_, field, what));
}

std::string JsonReader::shown(const json& value) {
  std::string s = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

void JsonReader::require_object(const json& value, const std::string& field) const {
  if (value.is_object()) return;
  if (field.empty()) {
    throw DataError(fmt::format("{}: expected a JSON object, got a JSON {}", source_, value.type_name()));
  }
  fail(field, fmt::format("must be an object, got {}", shown(value)));
}

bool JsonReader::has(const json& object, const std::string& key) const {
  return object.is_object() && object.find(key) != object.end();
}

const json& JsonReader::member(const json& object, const std::string& key, const std::string& field) const {
  require_object(object, field);
  const auto it = object.find(key);
  if (it == object.end()) throw DataError(fmt::format("{}: missing field '{}'", source_, join(field, key)));
  return *it;
}

int64_t JsonReader::integer_value(const json& v, const std::string& name, int64_t lo, int64_t hi) const {
  if (!v.is_number_integer()) fail(name, "must be an integer, got " + shown(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    fail(name, fmt::format("is out of range [{}, {}], got {}", lo, hi, shown(v)));
  }
  const int64_t n = v.get<int64_t>();
  if (n < lo || n > hi) fail(name, fmt::format("must be in [{}, {}], got {}", lo, hi, n));
  return n;
}

int64_t JsonReader::integer(const json& object, const std::string& key, const std::string& field, int64_t lo,
                            int64_t hi) const {
  return integer_value(member(object, key, field), join(field, key), lo, hi);
}

double JsonReader::number(const json& object, const std::string& key, const std::string& field, double lo,
                          double hi) const {
  const json& v = member(object, key, field);
  if (!v.is_number()) fail(join(field, key), "must be a number, got " + shown(v));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) fail(join(field, key), fmt::format("must be in [{}, {}], got {}", lo, hi, x));
  return x;
}

std::string JsonReader::string(const json& object, const std::string& key, const std::string& field) const {
  const json& v = member(object, key, field);
  if (!v.is_string()) fail(join(field, key), "must be a string, got " + shown(v));
  return v.get<std::string>();
}

bool JsonReader::boolean(const json& object, const std::string& key, const std::string& field) const {
  const json& v = member(object, key, field);
  if (!v.is_boolean()) fail(join(field, key), "must be true or false, got " + shown(v));
  return v.get<bool>();
}

const json& JsonReader::object(const json& object, const std::string& key, const std::string& field) const {
  const json& v = member(object, key, field);
  if (!v.is_object()) fail(join(field, key), "must be an object, got " + shown(v));
  return v;
}

const json& JsonReader::array(const json& object, const std::string& key, const std::string& field) const {
  const json& v = member(object, key, field);
  if (!v.is_array()) fail(join(field, key), "must be an array, got " + shown(v));
  return v;
}

}  // namespace quantppl
