// Test driver for tests/tokenizer/test_bpe_parity.py: prints the ids quantppl's Tokenizer gives
// for each text, so Python can compare them with Hugging Face tokenizers' ids.
//
//   quantppl_tokenize_driver TOKENIZER_FILE TEXTS_JSON
//     TOKENIZER_FILE  a tokenizer.json or a sentencepiece .model (Tokenizer::from_file detects which)
//     TEXTS_JSON      a JSON array of strings
//   stdout: {"kind": "bpe", "piece_count": N, "bos_id": ID or null, "ids": [[...], ...]}
//   An error prints "error: MESSAGE" on stderr and exits 2 (usage), 3 (data) or 4 (I/O).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "quantppl/error.h"
#include "quantppl/model/bpe_tokenizer.h"
#include "quantppl/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " TOKENIZER_FILE TEXTS_JSON\n";
    return 2;
  }
  try {
    const quantppl::Tokenizer tokenizer = quantppl::Tokenizer::from_file(argv[1]);
    std::ifstream in(argv[2], std::ios::binary);
    const auto texts = nlohmann::json::parse(std::string(std::istreambuf_iterator<char>(in), {}));
    nlohmann::json out;
    out["kind"] = quantppl::tokenizer_kind_name(tokenizer.kind());
    out["piece_count"] = tokenizer.piece_count();
    out["bos_id"] = nullptr;
    if (tokenizer.bpe() != nullptr && tokenizer.bpe()->post_processor_bos_id()) {
      out["bos_id"] = *tokenizer.bpe()->post_processor_bos_id();
    }
    out["ids"] = nlohmann::json::array();
    for (const auto& text : texts) out["ids"].push_back(tokenizer.encode(text.get<std::string>()));
    std::cout << out.dump() << "\n";
    return 0;
  } catch (const quantppl::DataError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 3;
  } catch (const quantppl::IoError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 4;
  } catch (const quantppl::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
