// THE table of quantization methods: what may follow a FORMAT in a variant
// spec, "+" METHOD [":" ARG]... (variant_spec.h). A method decides how each
// weight is rounded to its format (GPTQ's error compensation, AWQ's scaling,
// HQQ's zero-point search); the format (formats/format_table.h) decides what
// the rounded values can be. Plain round-to-nearest is the default and may be
// written "+rtn".
//
// Adding a method = one row here (name, one-line meaning, its ARG syntax,
// whether it reads calibration statistics) plus its file of math in methods/
// and its case in apply_method.cpp.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace quantppl {

// What a variant's methods amount to (resolve_methods). AWQ then GPTQ is the
// one combination: GPTQ on the AWQ-scaled weights (awq.h).
enum class MethodKind { kRtn, kGptq, kAwq, kHqq, kAwqGptq };

struct MethodInfo {
  std::string_view name;
  std::string_view meaning;
  std::string_view args;  // e.g. "" or "[:actorder]", for --help
  int min_args = 0;
  int max_args = 0;
  bool no_op = false;  // accepted and dropped: the variant is the format alone
  MethodKind kind = MethodKind::kRtn;
  bool needs_calibration = false;  // reads the activation statistics (--calibration ...)
};

inline const std::vector<MethodInfo>& method_table() {
  static const std::vector<MethodInfo> table = {
      {"rtn", "round to nearest (the default; the format's own rounding, no method)", "", 0, 0, true, MethodKind::kRtn,
       false},
      {"gptq",
       "GPTQ (Frantar et al. 2022): columns rounded one at a time, each one's error spread onto the columns not yet "
       "rounded through the calibration Hessian; :actorder rounds columns by descending diag(H) with static groups",
       "[:actorder]", 0, 1, false, MethodKind::kGptq, true},
      {"awq",
       "AWQ (Lin et al. 2023): input channels scaled by s = m^alpha (m = mean |x| on the calibration text) before "
       "rounding, alpha in {0, 0.05, ..., 0.95} chosen per input by the output error; +awq+gptq runs GPTQ on the "
       "scaled weights",
       "", 0, 0, false, MethodKind::kAwq, true},
      {"hqq",
       "HQQ (Badri & Shaji 2023): min-max scale kept, zero point optimised by a half-quadratic l_0.7 solver (the hqq "
       "package's default); no calibration data; zero-point grids only (zeropoint:B:..., q4_1, q5_1)",
       "", 0, 0, false, MethodKind::kHqq, false},
  };
  return table;
}

// A method as written in a variant: its name and its ':'-separated ARGs.
struct MethodSpec {
  std::string name;
  std::vector<std::string> args;
};

// The row called `name`, or nullptr.
const MethodInfo* find_method(std::string_view name);

// The kind of a variant's (non-no-op) methods, in spec order: none = RTN, one
// method = its kind, "awq" then "gptq" = kAwqGptq. UsageError naming `spec`
// for any other combination, a repeated method or an unknown ARG
// (e.g. "+gptq:foo": gptq takes "actorder").
MethodKind resolve_methods(const std::string& spec, const std::vector<MethodSpec>& methods);

// "rtn", "gptq", "awq", "hqq", "awq+gptq": the `method` field of reports.
std::string method_label(MethodKind kind);
bool method_needs_calibration(MethodKind kind);
// Whether the method's stored weights carry per-input scales (AWQ, AWQ+GPTQ:
// methods/method_weight.h's "input_scales" section).
bool stores_input_scales(MethodKind kind);

}  // namespace quantppl
