// A one-line progress bar with ETA on stderr, for people at a terminal.
// Silent when stderr is not a terminal or when disabled (--quiet).
#pragma once

#include <chrono>
#include <string>

namespace quantppl::cli {

class ProgressBar {
 public:
  explicit ProgressBar(bool enabled);
  ~ProgressBar();
  // Redraws at most ~10 times a second; `done` of `total` steps of `label`.
  void update(const std::string& label, size_t done, size_t total);
  void finish();

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  std::string label_;
  std::chrono::steady_clock::time_point label_start_;
};

}  // namespace quantppl::cli
