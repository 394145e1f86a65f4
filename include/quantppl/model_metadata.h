// quantppl.json, the metadata inside every contract model (docs/model-contract.md).
//
// A reader accepts exactly format_version 1 and architecture "t5", and checks
// every field it uses: integers where integers are required (1.0 and true
// are not integers), ids in [0, vocab_size), vocab_size in [1, kMaxVocabSize]
// and max_length in [1, kMaxSequenceLength] (larger values are implausible:
// corrupt or hostile metadata that would size gigabyte allocations),
// `source` an object. Unknown extra fields are kept (they survive a rewrite).
// The text is at most kMaxMetadataBytes and nests at most kMaxJsonDepth deep
// (json_input.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace quantppl {

// The format versions this reader understands.
inline const std::vector<int64_t> kSupportedFormatVersions = {1};

// Plausibility limits (docs/reliability.md). The largest real vocabularies are ~256k (mT5: 250 112);
// T5 was trained with 512 tokens and relative positions, and longer windows only cost memory.
constexpr int64_t kMaxVocabSize = int64_t{1} << 22;       // 4 194 304
constexpr int64_t kMaxSequenceLength = int64_t{1} << 16;  // 65 536
// A real quantppl.json is under 2 KB.
constexpr int64_t kMaxMetadataBytes = int64_t{1} << 20;

struct ModelMetadata {
  int64_t format_version = 0;
  std::string architecture;
  int64_t vocab_size = 0;  // V: the last dimension of the logits
  int64_t pad_token_id = 0;
  int64_t eos_token_id = 0;
  int64_t decoder_start_token_id = 0;
  int64_t max_length = 0;  // the longest encoder and decoder length the model is meant for
  std::string source;      // the "source" object, as compact JSON text
  std::string variant;     // the "variant" string set by `quantppl quantize`; empty if absent
  std::string json_text;   // the whole quantppl.json as read (for rewriting)
};

// Parses and validates quantppl.json. `source_name` prefixes every message
// ("model 'x.pt': quantppl.json"). Throws DataError for invalid JSON, a
// missing field, a wrong type, an out-of-range value, an unsupported
// format_version or an architecture other than "t5".
ModelMetadata parse_model_metadata(const std::string& json_text, const std::string& source_name);

// `json_text` with "variant" set to `variant` (replacing any previous one),
// re-serialised with sorted keys and 2-space indentation (as scripts/export_t5.py
// writes it). DataError if `json_text` is not a JSON object.
std::string metadata_with_variant(const std::string& json_text, const std::string& variant);

}  // namespace quantppl
