#include "quantppl/model_metadata.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "quantppl/error.h"
#include "quantppl/json_input.h"

namespace quantppl {
namespace {

using nlohmann::json;

json parse_object(const std::string& json_text, const std::string& source_name) {
  json j = parse_json(json_text, source_name);
  JsonReader(source_name).require_object(j, "");
  return j;
}

// A positive integer no larger than the plausible maximum `hi`: metadata beyond it is corrupt or
// hostile, and would size allocations (a window of max_length tokens, logits of vocab_size).
int64_t positive_field(const JsonReader& r, const json& j, const char* name, int64_t hi) {
  const int64_t n = r.integer(j, name);
  if (n <= 0) r.fail(name, fmt::format("must be a positive integer, got {}", n));
  if (n > hi) r.fail(name, fmt::format("is {}, more than the plausible maximum {} (a corrupt quantppl.json?)", n, hi));
  return n;
}

}  // namespace

ModelMetadata parse_model_metadata(const std::string& json_text, const std::string& source_name) {
  if (static_cast<int64_t>(json_text.size()) > kMaxMetadataBytes) {
    throw DataError(fmt::format("{}: {} bytes, more than the {}-byte limit for quantppl.json", source_name,
                                json_text.size(), kMaxMetadataBytes));
  }
  const json j = parse_object(json_text, source_name);
  const JsonReader r(source_name);
  ModelMetadata m;
  m.json_text = json_text;

  m.format_version = r.integer(j, "format_version");
  bool supported = false;
  std::string versions;
  for (const int64_t v : kSupportedFormatVersions) {
    supported = supported || v == m.format_version;
    versions += (versions.empty() ? "" : ", ") + std::to_string(v);
  }
  if (!supported) {
    throw DataError(source_name + ": format_version " + std::to_string(m.format_version) +
                    " is not supported (this quantppl reads version " + versions + ")");
  }

  m.architecture = r.string(j, "architecture");
  const bool t5 = m.architecture == "t5";
  const bool causal = m.architecture == "causal" && m.format_version >= 2;
  if (m.architecture == "causal" && !causal) {
    throw DataError(source_name + ": architecture 'causal' needs format_version 2, got format_version " +
                    std::to_string(m.format_version) + " (version 1 describes only T5)");
  }
  if (!t5 && !causal) {
    throw DataError(source_name + ": architecture '" + m.architecture + "' is not supported (expected " +
                    (m.format_version >= 2 ? "\"t5\" or \"causal\")" : "\"t5\")"));
  }

  m.vocab_size = positive_field(r, j, "vocab_size", kMaxVocabSize);
  const auto check_id = [&](const char* name, int64_t id) {
    if (id < 0 || id >= m.vocab_size) {
      r.fail(name, fmt::format("must be in [0, vocab_size = {}), got {}", m.vocab_size, id));
    }
    return id;
  };
  const auto token_id = [&](const char* name) { return check_id(name, r.integer(j, name)); };
  // A causal model's special ids may be null (GPT-2 has no pad, some models no BOS); the key
  // must still be present, so a misspelt key is not silently "no such token".
  const auto nullable_token_id = [&](const char* name) {
    const json& v = r.member(j, name);
    if (v.is_null()) return kNoToken;
    if (!v.is_number_integer()) r.fail(name, "must be an integer or null, got " + JsonReader::shown(v));
    return check_id(name, r.integer(j, name));
  };
  if (t5) {
    m.pad_token_id = token_id("pad_token_id");
    m.eos_token_id = token_id("eos_token_id");
    m.decoder_start_token_id = token_id("decoder_start_token_id");
  } else {
    m.bos_token_id = nullable_token_id("bos_token_id");
    m.eos_token_id = nullable_token_id("eos_token_id");
    m.pad_token_id = nullable_token_id("pad_token_id");
    m.decoder_start_token_id = 0;
    m.add_bos = r.boolean(j, "add_bos");
    if (m.add_bos && m.bos_token_id == kNoToken) {
      r.fail("add_bos", "is true but bos_token_id is null (no BOS token to add)");
    }
  }
  m.max_length = positive_field(r, j, "max_length", kMaxSequenceLength);

  if (m.format_version >= 2 && r.has(j, "tokenizer")) {
    const json& tok = r.object(j, "tokenizer");
    m.tokenizer_kind = r.string(tok, "kind", "tokenizer");
    m.tokenizer_file = r.string(tok, "file", "tokenizer");
    const char* expected_file = m.tokenizer_kind == "sentencepiece" ? "tokenizer.model"
                                : m.tokenizer_kind == "bpe"         ? "tokenizer.json"
                                                                    : nullptr;
    if (expected_file == nullptr) {
      r.fail("tokenizer.kind", "must be \"sentencepiece\" or \"bpe\", got " + JsonReader::shown(tok["kind"]));
    }
    if (m.tokenizer_file != expected_file) {
      r.fail("tokenizer.file", fmt::format("must be \"{}\" for kind \"{}\", got {}", expected_file, m.tokenizer_kind,
                                           JsonReader::shown(tok["file"])));
    }
  }
  if (r.has(j, "config")) r.object(j, "config");
  m.source = r.object(j, "source").dump();
  if (r.has(j, "variant")) m.variant = r.string(j, "variant");
  return m;
}

std::string metadata_with_variant(const std::string& json_text, const std::string& variant) {
  json j = parse_object(json_text, "quantppl.json");
  j["variant"] = variant;
  return j.dump(2);
}

}  // namespace quantppl
