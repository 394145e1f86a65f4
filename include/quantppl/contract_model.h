// A quantppl model file (docs/model-contract.md): a TorchScript T5 or causal
// language model with quantppl.json and its tokenizer (tokenizer.model, or the
// file quantppl.json's "tokenizer" names) as extra files.
//
// load() checks everything a later step would otherwise trip over: the file
// is a TorchScript archive, both extra files are present, the metadata
// parses (model_metadata.h), the tokenizer loads and has no more pieces than
// vocab_size (a T5 vocabulary is the sentencepiece pieces plus sentinel extra
// ids), there is at least one Linear layer, and every Linear weight is a
// finite float32 matrix. The module is put in eval() mode. LibTorch's
// c10::Error never escapes: it becomes a one-line DataError or IoError.
//
// Before LibTorch reads the file: it must be a regular file of at most
// kMaxModelFileBytes (regular_file.h) and a sound zip archive whose every
// member has its CRC-32 (archive_integrity.h). After torch::jit::load and
// before any tensor data is read: every tensor in the module (and every tensor
// constant in its code) is a dense cpu tensor that lies inside its storage
// record.
//
// Linear layers are the submodules whose type, with TorchScript's
// "___torch_mangle_N." name parts removed, is __torch__.torch.nn.modules.linear.Linear
// (about half of them are mangled in a scripted module). Checking "has a 2-D
// weight" instead would wrongly include embeddings and position-bias tables.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/script.h>

#include "quantppl/model_metadata.h"
#include "quantppl/tokenizer.h"

namespace quantppl {

struct LinearLayer {
  std::string name;      // module path, as Hugging Face names it: "decoder.block.3.layer.2.DenseReluDense.wo"
  torch::Tensor weight;  // [out_features, in_features] float32, ALIASING the module's parameter
  std::string source_path;  // the model file it was loaded from, if any (weight_backup.h's kModel storage)
};

class ContractModel {
 public:
  // `tokenizer_override`: a sentencepiece .model file used instead of the
  // archive's tokenizer.model (the archive must still contain one).
  // Errors: IoError for a missing path, a directory or another non-regular
  // file; DataError for an empty or oversized file, a file that is not a
  // TorchScript archive, a corrupt archive (CRC-32, sizes, a short storage
  // record), TorchScript code that does not load, a missing or invalid
  // extra file, a tokenizer larger than vocab_size, no Linear layer, a Linear
  // weight that is not a finite float32 matrix.
  static ContractModel load(const std::string& path, const std::string& tokenizer_override = "");

  const ModelMetadata& metadata() const { return metadata_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  const std::string& path() const { return path_; }
  // SHA-256 of the file the model was loaded from (the .qpack for a packed model), computed
  // in the same pass that verified the archive's integrity (archive_integrity.h).
  const std::string& file_sha256() const { return file_sha256_; }
  torch::jit::Module& module() { return module_; }

  // Every Linear layer in module-definition order (named_modules order). The
  // weights alias the module's parameters: an in-place edit (under
  // torch::NoGradGuard) changes what forward() computes.
  std::vector<LinearLayer> linear_layers();

  // The scripted forward under torch::InferenceMode (see contract_model.cpp
  // for why that is compatible with later in-place weight edits). Inputs are
  // int64 [B, S], [B, S], [B, T]; returns float32 [B, T, vocab_size].
  // DataError if the module fails or returns anything else. T5 models only
  // (UsageError on a causal model).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        const torch::Tensor& decoder_input_ids);
  // A causal model's forward(input_ids, attention_mask): int64 [B, S], [B, S]
  // (right padding: mask 1..1 0..0), B >= 1, 1 <= S <= max_length; returns
  // float32 [B, S, vocab_size] whose [b, i] scores token i + 1. UsageError on a
  // T5 model or bad shapes; DataError if the module fails or returns anything else.
  torch::Tensor forward_causal(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);

  // Writes the module (with its current weights) to `out_path` with
  // `metadata_json` as quantppl.json and this model's tokenizer bytes
  // (the override's, if one was given) as tokenizer.model. Atomic: written to
  // a temporary file in the same directory, then renamed over `out_path`; the
  // temporary file is removed on any error. `metadata_json` must parse as
  // contract metadata (DataError otherwise); IoError if writing fails.
  void save(const std::string& out_path, const std::string& metadata_json) const;

 private:
  ContractModel(std::string path, torch::jit::Module module, ModelMetadata metadata, Tokenizer tokenizer);
  // load(), and with `rebuilt_stripped`: a Linear weight stored as a zero-stride
  // view (a .qpack's embedded model, packed_model.h) becomes zeros of its shape
  // and its name is appended (load_packed_model then fills it).
  static ContractModel load_impl(const std::string& path, const std::string& tokenizer_override,
                                 std::vector<std::string>* rebuilt_stripped);
  // The scripted forward on `inputs`, its output checked to be float32 [batch, length, vocab_size].
  torch::Tensor run_forward(std::vector<c10::IValue> inputs, int64_t batch, int64_t length, const char* length_name);

  // load_packed_model reports the .qpack's digest, not the embedded model's.
  friend ContractModel load_packed_model(const std::string& path, const std::string& tokenizer_override);

  std::string path_;
  std::string file_sha256_;
  torch::jit::Module module_;
  ModelMetadata metadata_;
  Tokenizer tokenizer_;
};

// "__torch__.torch.nn.modules.linear.___torch_mangle_3.Linear" ->
// "__torch__.torch.nn.modules.linear.Linear".
std::string demangle_torchscript_type(const std::string& qualified_name);

}  // namespace quantppl
