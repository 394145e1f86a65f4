// The shipped defaults every command falls back on: the model, the text and
// the variants evaluated when none are named.
//
// Paths are under the source tree this binary was built from
// (QUANTPPL_SOURCE_DIR), or under $QUANTPPL_HOME when it is set and not
// empty (an installed or relocated copy).
#pragma once

#include <string>

namespace quantppl {

// models/default.pt: the flan-t5-small contract model (scripts/export_model.py).
std::string default_model_path();
// data/default_eval.txt: the evaluation text.
std::string default_text_path();
// The seeds' variants: fp32, absmax:8, zeropoint:8.
extern const char* const kDefaultVariants;

}  // namespace quantppl
