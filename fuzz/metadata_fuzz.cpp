// libFuzzer target: the quantppl.json reader on arbitrary bytes (scripts/fuzz.sh).
//
// Contract: parse_model_metadata returns metadata satisfying the invariants
// model_metadata.h promises (ids in [0, vocab_size), sizes in [1, the plausible maximum]), or throws
// quantppl::Error (DataError). metadata_with_variant likewise. Anything else
// (a nlohmann::json exception escaping, a crash, a sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "quantppl/error.h"
#include "quantppl/model_metadata.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const quantppl::ModelMetadata m = quantppl::parse_model_metadata(text, "model 'fuzz.pt': quantppl.json");
    const auto id_ok = [&](int64_t id) { return id >= 0 && id < m.vocab_size; };
    const auto nullable_ok = [&](int64_t id) { return id == quantppl::kNoToken || id_ok(id); };
    const bool t5 = m.architecture == "t5" && id_ok(m.pad_token_id) && id_ok(m.eos_token_id) &&
                    id_ok(m.decoder_start_token_id);
    const bool causal = m.architecture == "causal" && m.format_version == 2 && nullable_ok(m.bos_token_id) &&
                        nullable_ok(m.eos_token_id) && nullable_ok(m.pad_token_id) &&
                        (!m.add_bos || id_ok(m.bos_token_id));
    const bool tokenizer = (m.tokenizer_kind == "sentencepiece" && m.tokenizer_file == "tokenizer.model") ||
                           (m.tokenizer_kind == "bpe" && m.tokenizer_file == "tokenizer.json");
    const bool ok = (m.format_version == 1 || m.format_version == 2) && (t5 || causal) && tokenizer &&
                    m.vocab_size > 0 && m.max_length > 0 && m.vocab_size <= quantppl::kMaxVocabSize &&
                    m.max_length <= quantppl::kMaxSequenceLength;
    if (!ok) std::abort();
    // A rewrite with a variant must read back with the same fields.
    const quantppl::ModelMetadata again = quantppl::parse_model_metadata(
        quantppl::metadata_with_variant(text, "absmax:8:tensor:minmax"), "rewritten");
    if (again.vocab_size != m.vocab_size || again.variant != "absmax:8:tensor:minmax") std::abort();
  } catch (const quantppl::Error&) {
  }
  try {
    (void)quantppl::metadata_with_variant(text, "zeropoint:4:group64:mse");
  } catch (const quantppl::Error&) {
  }
  return 0;
}
