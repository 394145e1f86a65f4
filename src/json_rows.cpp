#include "json_rows.h"

#include <cmath>
#include <sstream>

#include <fmt/format.h>

namespace quantppl::json_rows {

using nlohmann::ordered_json;

ordered_json number_or_null(double value) {
  if (!std::isfinite(value)) return nullptr;
  return value;
}

ordered_json number_or_null(const std::optional<double>& value) {
  return value ? number_or_null(*value) : ordered_json(nullptr);
}

std::string csv_cell(const ordered_json& value) {
  if (value.is_null()) return "";
  if (value.is_string()) {
    const std::string s = value.get<std::string>();
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string quoted = "\"";
    for (const char c : s) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
    return quoted + "\"";
  }
  if (value.is_number_float()) return fmt::format("{:.17g}", value.get<double>());
  return value.dump();
}

std::string csv_table(const std::vector<ordered_json>& rows) {
  std::ostringstream out;
  for (size_t r = 0; r < rows.size(); ++r) {
    if (r == 0) {
      bool first = true;
      for (const auto& [key, value] : rows[0].items()) {
        out << (first ? "" : ",") << key;
        first = false;
      }
      out << "\n";
    }
    bool first = true;
    for (const auto& [key, value] : rows[r].items()) {
      out << (first ? "" : ",") << csv_cell(value);
      first = false;
    }
    out << "\n";
  }
  return out.str();
}

nlohmann::ordered_json calibration_json(const std::optional<CalibrationProvenance>& c) {
  if (!c) return nullptr;
  nlohmann::ordered_json j;
  j["text"] = c->text_path;
  j["sha256"] = c->text_sha256;
  j["tokens"] = c->tokens;
  j["mode"] = c->mode;
  j["stats"] = c->stats_path.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(c->stats_path);
  return j;
}

nlohmann::ordered_json flatten_calibration(const nlohmann::ordered_json& row) {
  nlohmann::ordered_json flat;
  for (const auto& [key, value] : row.items()) {
    if (key != "calibration") {
      flat[key] = value;
      continue;
    }
    for (const char* field : {"text", "sha256", "tokens", "mode", "stats"}) {
      flat[std::string("calibration_") + field] = value.is_object() ? value[field] : nlohmann::ordered_json(nullptr);
    }
  }
  return flat;
}

}  // namespace quantppl::json_rows
