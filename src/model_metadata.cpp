#include "quantppl/model_metadata.h"

#include <nlohmann/json.hpp>

#include "quantppl/error.h"

namespace quantppl {
namespace {

using nlohmann::json;

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

json parse_object(const std::string& json_text, const std::string& source_name) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for a number beyond double's range ("1e999", found by
    // fuzz/metadata_fuzz.cpp). nlohmann's message starts "[json.exception.parse_error.101] ...".
    std::string what = e.what();
    if (const auto p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
    throw DataError(source_name + ": not valid JSON: " + first_line(what));
  }
  if (!j.is_object()) {
    throw DataError(source_name + ": expected a JSON object, got a JSON " + std::string(j.type_name()));
  }
  return j;
}

const json& field(const json& j, const char* name, const std::string& source_name) {
  const auto it = j.find(name);
  if (it == j.end()) throw DataError(source_name + ": missing field '" + name + "'");
  return *it;
}

std::string shown(const json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

int64_t integer_field(const json& j, const char* name, const std::string& source_name) {
  const json& v = field(j, name, source_name);
  if (!v.is_number_integer()) {
    throw DataError(source_name + ": field '" + name + "' must be an integer, got " + shown(v));
  }
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    throw DataError(source_name + ": field '" + name + "' is out of range, got " + shown(v));
  }
  return v.get<int64_t>();
}

}  // namespace

ModelMetadata parse_model_metadata(const std::string& json_text, const std::string& source_name) {
  const json j = parse_object(json_text, source_name);
  ModelMetadata m;
  m.json_text = json_text;

  m.format_version = integer_field(j, "format_version", source_name);
  bool supported = false;
  std::string versions;
  for (const int64_t v : kSupportedFormatVersions) {
    supported = supported || v == m.format_version;
    versions += (versions.empty() ? "" : ", ") + std::to_string(v);
  }
  if (!supported) {
    throw DataError(source_name + ": format_version " + std::to_string(m.format_version) +
                    " is not supported (this quantppl reads version " + versions + ")");
  }

  const json& arch = field(j, "architecture", source_name);
  if (!arch.is_string()) {
    throw DataError(source_name + ": field 'architecture' must be a string, got " + shown(arch));
  }
  m.architecture = arch.get<std::string>();
  if (m.architecture != "t5") {
    throw DataError(source_name + ": architecture '" + m.architecture + "' is not supported (expected \"t5\")");
  }

  m.vocab_size = integer_field(j, "vocab_size", source_name);
  if (m.vocab_size <= 0) {
    throw DataError(source_name + ": field 'vocab_size' must be a positive integer, got " +
                    std::to_string(m.vocab_size));
  }
  const auto token_id = [&](const char* name) {
    const int64_t id = integer_field(j, name, source_name);
    if (id < 0 || id >= m.vocab_size) {
      throw DataError(source_name + ": field '" + name + "' must be in [0, vocab_size = " +
                      std::to_string(m.vocab_size) + "), got " + std::to_string(id));
    }
    return id;
  };
  m.pad_token_id = token_id("pad_token_id");
  m.eos_token_id = token_id("eos_token_id");
  m.decoder_start_token_id = token_id("decoder_start_token_id");

  m.max_length = integer_field(j, "max_length", source_name);
  if (m.max_length <= 0) {
    throw DataError(source_name + ": field 'max_length' must be a positive integer, got " +
                    std::to_string(m.max_length));
  }

  const json& source = field(j, "source", source_name);
  if (!source.is_object()) {
    throw DataError(source_name + ": field 'source' must be an object, got " + shown(source));
  }
  m.source = source.dump();

  if (const auto it = j.find("variant"); it != j.end()) {
    if (!it->is_string()) {
      throw DataError(source_name + ": field 'variant' must be a string, got " + shown(*it));
    }
    m.variant = it->get<std::string>();
  }
  return m;
}

std::string metadata_with_variant(const std::string& json_text, const std::string& variant) {
  json j = parse_object(json_text, "quantppl.json");
  j["variant"] = variant;
  return j.dump(2);
}

}  // namespace quantppl
