#include "quantppl/error.h"

#include <exception>
#include <vector>

#include <fmt/format.h>

namespace quantppl {

std::string printable(std::string_view message) {
  std::string out;
  out.reserve(message.size());
  for (const char ch : message) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\0') {
      out += "\\0";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if ((c < 0x20 && c != '\t') || c == 0x7F) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += ch;
    }
  }
  return out;
}

namespace {

thread_local std::vector<std::string> t_activities;
thread_local std::string t_failed_activity;

}  // namespace

ActivityScope::ActivityScope(std::string activity) : uncaught_at_entry_(std::uncaught_exceptions()) {
  t_activities.push_back(std::move(activity));
  t_failed_activity.clear();
}

ActivityScope::~ActivityScope() {
  // Unwinding: the innermost scope runs first and records itself; outer scopes leave it be.
  if (std::uncaught_exceptions() > uncaught_at_entry_ && t_failed_activity.empty()) {
    t_failed_activity = t_activities.back();
  }
  t_activities.pop_back();
}

const std::string& ActivityScope::failed_activity() { return t_failed_activity; }

}  // namespace quantppl
