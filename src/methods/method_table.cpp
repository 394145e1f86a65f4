// The method table's lookups; see include/quantppl/methods/method_table.h.
#include "quantppl/methods/method_table.h"

#include <algorithm>

#include <fmt/format.h>

#include "quantppl/error.h"

namespace quantppl {

const MethodInfo* find_method(std::string_view name) {
  const auto it = std::find_if(method_table().begin(), method_table().end(),
                               [&](const MethodInfo& m) { return m.name == name; });
  return it == method_table().end() ? nullptr : &*it;
}

MethodKind resolve_methods(const std::string& spec, const std::vector<MethodSpec>& methods) {
  const auto fail = [&](const std::string& what) {
    throw UsageError(fmt::format("invalid variant '{}': {}", spec, what));
  };
  std::vector<MethodKind> kinds;
  for (const MethodSpec& m : methods) {
    const MethodInfo* info = find_method(m.name);
    if (info == nullptr) fail(fmt::format("unknown method '{}'", m.name));
    if (info->no_op) continue;
    for (const std::string& arg : m.args) {
      // The one ARG any method takes today.
      if (!(info->kind == MethodKind::kGptq && arg == "actorder")) {
        fail(fmt::format("method '{}' does not take '{}'{}", m.name, arg,
                         info->kind == MethodKind::kGptq ? " (gptq takes: actorder)" : " (it takes no argument)"));
      }
    }
    if (std::find(kinds.begin(), kinds.end(), info->kind) != kinds.end()) {
      fail(fmt::format("method '{}' is given twice", m.name));
    }
    kinds.push_back(info->kind);
  }
  if (kinds.empty()) return MethodKind::kRtn;
  if (kinds.size() == 1) return kinds[0];
  if (kinds.size() == 2 && kinds[0] == MethodKind::kAwq && kinds[1] == MethodKind::kGptq) return MethodKind::kAwqGptq;
  fail("methods combine only as +awq+gptq (AWQ's scaling, then GPTQ on the scaled weights)");
  return MethodKind::kRtn;
}

std::string method_label(MethodKind kind) {
  switch (kind) {
    case MethodKind::kRtn: return "rtn";
    case MethodKind::kGptq: return "gptq";
    case MethodKind::kAwq: return "awq";
    case MethodKind::kHqq: return "hqq";
    case MethodKind::kAwqGptq: return "awq+gptq";
  }
  return "rtn";
}

bool method_needs_calibration(MethodKind kind) {
  return kind == MethodKind::kGptq || kind == MethodKind::kAwq || kind == MethodKind::kAwqGptq;
}

bool stores_input_scales(MethodKind kind) { return kind == MethodKind::kAwq || kind == MethodKind::kAwqGptq; }

}  // namespace quantppl
