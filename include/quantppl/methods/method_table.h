// THE table of quantization methods: what may follow a FORMAT in a variant
// spec, "+" METHOD [":" ARG]... (variant_spec.h). A method decides how each
// weight is rounded to its format (GPTQ's error compensation, AWQ's scaling,
// HQQ's parameter search); the format (formats/format_table.h) decides what
// the rounded values can be. Plain round-to-nearest is the default and may be
// written "+rtn".
//
// Adding a method = one row here (name, one-line meaning, its ARG syntax and
// how many ARGs it takes) plus its file in methods/.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace quantppl {

struct MethodInfo {
  std::string_view name;
  std::string_view meaning;
  std::string_view args;  // e.g. "" or "[:DAMP]", for --help
  int min_args = 0;
  int max_args = 0;
  bool no_op = false;  // accepted and dropped: the variant is the format alone
};

inline const std::vector<MethodInfo>& method_table() {
  static const std::vector<MethodInfo> table = {
      {"rtn", "round to nearest (the default; the format's own rounding, no method)", "", 0, 0, true},
  };
  return table;
}

// A method as written in a variant: its name and its ':'-separated ARGs.
struct MethodSpec {
  std::string name;
  std::vector<std::string> args;
};

}  // namespace quantppl
