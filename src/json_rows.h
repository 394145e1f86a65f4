// Helpers shared by the JSON/CSV renderers (report.cpp, layer_inspection.cpp,
// sensitivity.cpp). Private to the library: nlohmann_json is not part of the
// public interface.
//
// Conventions: a value that does not exist or is not finite (an infinite
// SQNR, a NaN) is JSON null and an empty CSV cell; floats carry 17
// significant digits in CSV so that a script reads back the exact double.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quantppl/methods/variant_methods.h"

namespace quantppl::json_rows {

nlohmann::ordered_json number_or_null(double value);
nlohmann::ordered_json number_or_null(const std::optional<double>& value);

// One CSV cell, quoted per RFC 4180 when it holds a comma, quote or newline.
std::string csv_cell(const nlohmann::ordered_json& value);

// A header from the first row's keys, then one line per row (all rows must
// have the same keys in the same order).
std::string csv_table(const std::vector<nlohmann::ordered_json>& rows);

// Where a calibrated method's statistics came from, as the `calibration`
// object of compare rows and inspect reports: {text, sha256, tokens, mode,
// stats}; null without calibration.
nlohmann::ordered_json calibration_json(const std::optional<CalibrationProvenance>& calibration);

// CSV has no nesting: a "calibration" object becomes calibration_text,
// calibration_sha256, ... (null cells when it is null).
nlohmann::ordered_json flatten_calibration(const nlohmann::ordered_json& row);

}  // namespace quantppl::json_rows
