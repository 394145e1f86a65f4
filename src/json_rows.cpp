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

}  // namespace quantppl::json_rows
