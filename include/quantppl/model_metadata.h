// quantppl.json, the metadata inside every contract model (docs/model-contract.md).
//
// A reader accepts format_version 1 (architecture "t5" only, a sentencepiece
// tokenizer.model) and format_version 2 (architecture "t5" or "causal", and an
// optional "tokenizer" object {"kind": "sentencepiece" | "bpe", "file":
// "tokenizer.model" | "tokenizer.json"}, the file fixed by the kind; absent
// means sentencepiece). A t5 model has integer pad_token_id, eos_token_id and
// decoder_start_token_id in both versions (its meaning is unchanged by v2).
// A causal model has bos_token_id, eos_token_id and pad_token_id, each an
// integer or null, and the boolean add_bos (true needs a bos_token_id).
// Every field it uses is checked: integers where integers are required (1.0
// and true are not integers), ids in [0, vocab_size), vocab_size in [1, kMaxVocabSize]
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
inline const std::vector<int64_t> kSupportedFormatVersions = {1, 2};

// A causal model's null token id (bos/eos/pad "null" in quantppl.json).
constexpr int64_t kNoToken = -1;

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
  // t5: always ids. causal: an id, or kNoToken when null (pad only fills padded positions).
  int64_t pad_token_id = 0;
  int64_t eos_token_id = 0;
  int64_t decoder_start_token_id = 0;  // t5 only (0 for causal)
  int64_t bos_token_id = kNoToken;     // causal only: an id or kNoToken
  bool add_bos = false;                // causal only: the tokenizer starts every text with BOS
  int64_t max_length = 0;  // t5: the longest encoder and decoder length; causal: the longest sequence
  std::string tokenizer_kind = "sentencepiece";  // "sentencepiece" or "bpe"
  std::string tokenizer_file = "tokenizer.model";  // the archive's extra file holding the tokenizer
  std::string source;      // the "source" object, as compact JSON text
  std::string variant;     // the "variant" string set by `quantppl quantize`; empty if absent
  std::string json_text;   // the whole quantppl.json as read (for rewriting)

  bool is_causal() const { return architecture == "causal"; }
  // The id written into padded positions (masked out, so any valid id does): pad, else 0.
  int64_t padding_id() const { return pad_token_id >= 0 ? pad_token_id : 0; }
};

// Parses and validates quantppl.json. `source_name` prefixes every message
// ("model 'x.pt': quantppl.json"). Throws DataError for invalid JSON, a
// missing field, a wrong type, an out-of-range value, an unsupported
// format_version, an architecture other than "t5" (v1) or "t5"/"causal" (v2),
// a tokenizer kind other than sentencepiece/bpe or a file not matching it,
// add_bos true with a null bos_token_id.
ModelMetadata parse_model_metadata(const std::string& json_text, const std::string& source_name);

// `json_text` with "variant" set to `variant` (replacing any previous one),
// re-serialised with sorted keys and 2-space indentation (as scripts/export_t5.py
// writes it). DataError if `json_text` is not a JSON object.
std::string metadata_with_variant(const std::string& json_text, const std::string& variant);

}  // namespace quantppl
