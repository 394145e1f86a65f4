#include "quantppl/provenance.h"

#include <fmt/format.h>
#include <torch/version.h>

namespace quantppl {

Provenance make_provenance(const std::string& model_path, const std::string& model_sha256, const std::string& include,
                           const std::string& exclude) {
  Provenance p;
  p.quantppl_version = QUANTPPL_VERSION;
  p.libtorch_version = fmt::format("{}.{}.{}", TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);
  p.model_path = model_path;
  p.model_sha256 = model_sha256;
  p.include = include;
  p.exclude = exclude;
  return p;
}

nlohmann::ordered_json to_json(const Provenance& p) {
  using nlohmann::ordered_json;
  ordered_json j;
  j["quantppl_version"] = p.quantppl_version;
  j["libtorch_version"] = p.libtorch_version;
  j["model"] = p.model_path;
  j["model_sha256"] = p.model_sha256;
  if (p.has_text) {
    j["text"] = p.text_path;
    j["text_sha256"] = p.text_sha256;
    j["text_tokens"] = p.text_tokens;
    j["max_tokens"] = p.max_tokens > 0 ? ordered_json(p.max_tokens) : ordered_json(nullptr);
    j["windows"] = p.windows;
    j["mode"] = p.mode;
    j["stride"] = p.stride > 0 ? ordered_json(p.stride) : ordered_json(nullptr);
    j["tokens_file"] = p.tokens_path.empty() ? ordered_json(nullptr) : ordered_json(p.tokens_path);
    j["max_length"] = p.max_length;
    j["batch_size"] = p.batch_size;
    j["threads"] = p.threads;
    j["window_order"] = p.window_order;
    j["seed"] = p.seed ? ordered_json(*p.seed) : ordered_json(nullptr);
    j["ci_target_pct"] = p.ci_target_pct ? ordered_json(*p.ci_target_pct) : ordered_json(nullptr);
  }
  j["include"] = p.include;
  j["exclude"] = p.exclude;
  return j;
}

}  // namespace quantppl
