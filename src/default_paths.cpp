#include "quantppl/default_paths.h"

#include <cstdlib>

namespace quantppl {

const char* const kDefaultVariants = "fp32,absmax:8,zeropoint:8";

namespace {

std::string home() {
  const char* env = std::getenv("QUANTPPL_HOME");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(QUANTPPL_SOURCE_DIR);
}

}  // namespace

std::string default_model_path() { return home() + "/models/default.pt"; }
std::string default_text_path() { return home() + "/data/default_eval.txt"; }

}  // namespace quantppl
