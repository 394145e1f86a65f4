// The names of an enum's values, written once. One EnumTable per enum (value,
// name, one-line help) serves every place that turns the enum into text or
// back: variant specs, reports, the .qpack header, and the CLI's validators
// and --help (src/cli/common_flags.h). A name spelled anywhere else is a bug.
//
// Tables are constexpr aggregates, so they are constant-initialised: other
// static objects may read them during start-up in any order.
//
//   inline constexpr EnumTable<Scheme, 2> kSchemeNames{"scheme", {{
//       {Scheme::kAbsmax, "absmax", "symmetric, z = 0"},
//       {Scheme::kZeroPoint, "zeropoint", "asymmetric, integer zero point"}}}};
//   kSchemeNames.name(Scheme::kAbsmax)            -> "absmax"
//   kSchemeNames.find("zeropoint")                -> Scheme::kZeroPoint
//   kSchemeNames.parse("abs", "--scheme")         -> UsageError "--scheme: unknown scheme 'abs'; expected absmax or zeropoint"
//   kSchemeNames.choices("|")                     -> "absmax|zeropoint"
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "quantppl/error.h"

namespace quantppl {

template <typename E>
struct EnumName {
  E value;
  std::string_view name;  // lower case, no spaces: what users type and files store
  std::string_view help;  // one line for --help and docs
};

template <typename E, std::size_t N>
struct EnumTable {
  std::string_view what;  // what the enum is, for messages: "scheme", "output format"
  std::array<EnumName<E>, N> entries;

  // The name of `value`. Every table lists every value of its enum (the
  // tests check each), so the fallback "?" marks a missing row, not input.
  constexpr std::string_view name(E value) const {
    for (const EnumName<E>& e : entries) {
      if (e.value == value) return e.name;
    }
    return "?";
  }

  constexpr std::string_view help(E value) const {
    for (const EnumName<E>& e : entries) {
      if (e.value == value) return e.help;
    }
    return "?";
  }

  // Exact, case-sensitive match.
  constexpr std::optional<E> find(std::string_view name) const {
    for (const EnumName<E>& e : entries) {
      if (e.name == name) return e.value;
    }
    return std::nullopt;
  }

  // find(), or a UsageError naming `context` (a flag, a spec) and the choices.
  E parse(std::string_view name, std::string_view context) const {
    if (const std::optional<E> value = find(name)) return *value;
    throw UsageError(unknown_message(name, context));
  }

  // "{context}: unknown {what} '{name}'; expected a, b or c".
  std::string unknown_message(std::string_view name, std::string_view context) const {
    std::string message(context);
    if (!message.empty()) message += ": ";
    message += "unknown " + std::string(what) + " '" + std::string(name) + "'; expected " + choices_in_words();
    return message;
  }

  // The names joined by `separator`: "table, json, csv" or "table|json|csv".
  std::string choices(std::string_view separator = ", ") const {
    std::string out;
    for (std::size_t i = 0; i < N; ++i) {
      if (i > 0) out += separator;
      out += entries[i].name;
    }
    return out;
  }

  // "a", "a or b", "a, b or c".
  std::string choices_in_words() const {
    std::string out;
    for (std::size_t i = 0; i < N; ++i) {
      if (i > 0) out += i + 1 == N ? " or " : ", ";
      out += entries[i].name;
    }
    return out;
  }

  // "a: help of a; b: help of b", for option descriptions.
  std::string described() const {
    std::string out;
    for (std::size_t i = 0; i < N; ++i) {
      if (i > 0) out += "; ";
      out += std::string(entries[i].name) + ": " + std::string(entries[i].help);
    }
    return out;
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const EnumName<E>& e : entries) out.emplace_back(e.name);
    return out;
  }
};

}  // namespace quantppl
