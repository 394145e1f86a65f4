// What a run measured and with what: the one record of a run's inputs and
// settings that compare, sensitivity and inspect all print (JSON top level,
// CSV columns), declared and serialized once here.
//
// The evaluation fields (text ... ci_target_pct) exist only for runs that
// evaluate a text (has_text); inspect reads weights only and omits them.
// With --ci-target the windows are evaluated in a pseudo-random order drawn
// from `seed` (engine.h); without it window_order is "text" and seed null.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace quantppl {

struct Provenance {
  std::string quantppl_version;
  std::string libtorch_version;
  std::string model_path;
  std::string model_sha256;
  std::string include;  // regex on Linear module names ("" = all)
  std::string exclude;  // regex ("" = none)

  bool has_text = false;
  std::string text_path;
  std::string text_sha256;
  int64_t text_tokens = 0;  // tokens of the text used (after --max-tokens), EOS included
  int64_t max_tokens = 0;   // sensitivity's --max-tokens (0: the whole text; serialized as null)
  int64_t windows = 0;
  std::string mode;
  int64_t stride = 0;       // --stride of --mode causal (0: none; serialized as null)
  std::string tokens_path;  // --tokens FILE when the ids came from one (then text_path is it too); "" = none
  int64_t max_length = 0;
  int64_t batch_size = 0;
  int64_t threads = 0;
  std::string window_order = "text";    // "text" or "shuffled"
  std::optional<uint64_t> seed;         // the shuffle's seed (only with --ci-target)
  std::optional<double> ci_target_pct;  // --ci-target
};

// The provenance of a run of this binary (versions filled in), for `model_path`.
Provenance make_provenance(const std::string& model_path, const std::string& model_sha256, const std::string& include,
                           const std::string& exclude);

// Keys: quantppl_version, libtorch_version, model, model_sha256, then with a
// text: text, text_sha256, text_tokens, max_tokens, windows, mode, stride,
// tokens_file, max_length, batch_size, threads, window_order, seed, ci_target_pct; then
// include, exclude. Absent values are null.
nlohmann::ordered_json to_json(const Provenance& provenance);

}  // namespace quantppl
