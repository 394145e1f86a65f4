#include "quantppl/contract_model.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <regex>

#include <torch/script.h>

#include "quantppl/error.h"
#include "quantppl/output_file.h"

namespace quantppl {
namespace {

constexpr const char* kMetadataFile = "quantppl.json";
constexpr const char* kTokenizerFile = "tokenizer.model";
constexpr const char* kLinearType = "__torch__.torch.nn.modules.linear.Linear";
// torch::jit::load leaves an entry of the extra-files map untouched when the
// archive lacks that file, so a value no real file can have marks "absent".
const std::string kAbsent("\0quantppl:absent\0", 17);

// One line out of a LibTorch error. Errors raised inside the TorchScript
// interpreter carry two tracebacks and end with the Python-style line
// "RuntimeError: index out of range in self": that last line is the message.
// Otherwise the first line, never the C++ backtrace.
std::string one_line(const std::string& msg) {
  if (msg.find("Traceback of TorchScript") != std::string::npos) {
    std::string last;
    size_t begin = 0;
    while (begin < msg.size()) {
      const size_t end = std::min(msg.find('\n', begin), msg.size());
      if (end > begin && msg[begin] != ' ') last = msg.substr(begin, end - begin);
      begin = end + 1;
    }
    if (!last.empty()) return last;
  }
  return msg.substr(0, msg.find('\n'));
}

std::string one_line(const c10::Error& e) { return one_line(e.what_without_backtrace()); }

std::string describe(const std::string& path) { return "model '" + path + "'"; }

std::string shape_string(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

std::string dtype_string(const torch::Tensor& t) { return std::string(c10::toString(t.scalar_type())); }

// Linear layers with only the cheap checks (dtype, rank); load() adds the finiteness check.
std::vector<LinearLayer> find_linear_layers(const torch::jit::Module& module, const std::string& path) {
  std::vector<LinearLayer> layers;
  for (const auto& item : module.named_modules()) {
    const auto type_name = item.value.type()->name();
    if (!type_name || demangle_torchscript_type(type_name->qualifiedName()) != kLinearType) continue;
    const std::string name = item.name.empty() ? "<root>" : item.name;
    if (!item.value.hasattr("weight") || !item.value.attr("weight").isTensor()) {
      throw DataError(describe(path) + ": Linear layer '" + name + "' has no weight tensor");
    }
    torch::Tensor weight = item.value.attr("weight").toTensor();
    if (weight.scalar_type() != torch::kFloat32 || weight.dim() != 2) {
      throw DataError(describe(path) + ": Linear layer '" + name + "' has a " + dtype_string(weight) + " weight of shape " +
                      shape_string(weight) + ", expected a float32 matrix [out_features, in_features]");
    }
    layers.push_back({name, std::move(weight)});
  }
  if (layers.empty()) {
    throw DataError(describe(path) + " has no torch.nn.Linear layer (nothing to quantize)");
  }
  return layers;
}

bool all_finite(const torch::Tensor& weight) {
  // A read-only float32 sum (~10 ms over flan-t5-small's 60M Linear weights,
  // no model-sized temporary) is NaN or Inf whenever a weight is; only then is
  // the exact, allocating test run (it also clears finite weights whose
  // float32 sum overflowed).
  if (std::isfinite(weight.sum().item<float>())) return true;
  return torch::isfinite(weight).all().item<bool>();
}

}  // namespace

std::string demangle_torchscript_type(const std::string& qualified_name) {
  static const std::regex kMangle(R"(___torch_mangle_\d+\.)");
  return std::regex_replace(qualified_name, kMangle, "");
}

ContractModel::ContractModel(std::string path, torch::jit::Module module, ModelMetadata metadata, Tokenizer tokenizer)
    : path_(std::move(path)), module_(std::move(module)), metadata_(std::move(metadata)), tokenizer_(std::move(tokenizer)) {}

ContractModel ContractModel::load(const std::string& path, const std::string& tokenizer_override) {
  const ActivityScope activity("loading " + describe(path));
  struct stat st {};
  if (path.empty()) throw IoError("model path is empty");
  if (::stat(path.c_str(), &st) != 0) {
    throw IoError("cannot open " + describe(path) + ": " + std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) {
    throw IoError(describe(path) + " is a directory, expected a TorchScript model file");
  }
  if (st.st_size == 0) {
    throw DataError(describe(path) + " is empty (0 bytes), expected a TorchScript archive");
  }

  torch::jit::ExtraFilesMap extra{{kMetadataFile, kAbsent}, {kTokenizerFile, kAbsent}};
  torch::jit::Module module;
  try {
    module = torch::jit::load(path, c10::nullopt, extra);
  } catch (const c10::Error& e) {
    throw DataError(describe(path) + " is not a TorchScript archive (" + one_line(e) + ")");
  }
  module.eval();

  if (extra[kMetadataFile] == kAbsent) {
    throw DataError(describe(path) + " has no " + kMetadataFile +
                    " extra file: not a quantppl model (export it with scripts/export_t5.py)");
  }
  if (extra[kTokenizerFile] == kAbsent) {
    throw DataError(describe(path) + " has no " + kTokenizerFile + " extra file (export it with scripts/export_t5.py)");
  }
  ModelMetadata metadata = parse_model_metadata(extra[kMetadataFile], describe(path) + ": " + kMetadataFile);
  Tokenizer tokenizer = tokenizer_override.empty()
                            ? Tokenizer::from_bytes(std::move(extra[kTokenizerFile]), describe(path) + ": " + kTokenizerFile)
                            : Tokenizer::from_file(tokenizer_override);
  if (tokenizer.piece_count() > metadata.vocab_size) {
    throw DataError(tokenizer.source_name() + " has " + std::to_string(tokenizer.piece_count()) +
                    " pieces, more than the vocab_size " + std::to_string(metadata.vocab_size) + " of " + describe(path));
  }
  if (!tokenizer_override.empty()) {
    // An override must be this model's vocabulary (tokenizer.h). Compared with the archive's own
    // tokenizer when that one loads; a corrupt one is what an override may legitimately replace.
    std::optional<Tokenizer> own;
    try {
      own.emplace(Tokenizer::from_bytes(std::move(extra[kTokenizerFile]), describe(path) + ": " + kTokenizerFile));
    } catch (const DataError&) {
    }
    if (own) check_same_vocabulary(tokenizer, *own);
  }

  for (const LinearLayer& layer : find_linear_layers(module, path)) {
    if (!all_finite(layer.weight)) {
      throw DataError(describe(path) + ": Linear layer '" + layer.name + "' has NaN or Inf weights");
    }
    // Quantized in place (quantize.h): a strided view (a transposed weight) cannot be.
    if (!layer.weight.is_contiguous()) {
      throw DataError(describe(path) + ": Linear layer '" + layer.name + "' has a non-contiguous weight (shape " +
                      shape_string(layer.weight) + ", strides " + c10::str(layer.weight.strides()) +
                      "); re-export it with contiguous weights (.contiguous())");
    }
  }
  return ContractModel(path, std::move(module), std::move(metadata), std::move(tokenizer));
}

std::vector<LinearLayer> ContractModel::linear_layers() { return find_linear_layers(module_, path_); }

torch::Tensor ContractModel::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                     const torch::Tensor& decoder_input_ids) {
  // InferenceMode rather than NoGradGuard: it also skips version-counter and
  // view tracking, and it only marks tensors *created* inside it as inference
  // tensors. The parameters were created outside, so they stay ordinary
  // tensors and can still be edited in place under NoGradGuard between
  // forward calls (tested in ContractModelTest.InPlaceWeightEditAfterForward).
  // The returned logits are inference tensors: read them, don't edit them
  // outside InferenceMode.
  if (input_ids.dim() != 2 || attention_mask.sizes() != input_ids.sizes() || decoder_input_ids.dim() != 2 ||
      decoder_input_ids.size(0) != input_ids.size(0) || input_ids.scalar_type() != torch::kInt64 ||
      attention_mask.scalar_type() != torch::kInt64 || decoder_input_ids.scalar_type() != torch::kInt64) {
    throw UsageError("forward of " + describe(path_) + " needs int64 input_ids [B, S], attention_mask [B, S], "
                     "decoder_input_ids [B, T]; got " + dtype_string(input_ids) + " " + shape_string(input_ids) + ", " +
                     dtype_string(attention_mask) + " " + shape_string(attention_mask) + ", " +
                     dtype_string(decoder_input_ids) + " " + shape_string(decoder_input_ids));
  }
  c10::InferenceMode inference;
  c10::IValue output;
  try {
    output = module_.forward({input_ids, attention_mask, decoder_input_ids});
  } catch (const c10::Error& e) {
    throw DataError(describe(path_) + ": forward failed: " + one_line(e));
  } catch (const std::runtime_error& e) {  // torch::jit::JITException: an exception raised in TorchScript code
    throw DataError(describe(path_) + ": forward failed: " + one_line(std::string(e.what())));
  }
  const int64_t batch = decoder_input_ids.size(0);
  const int64_t length = decoder_input_ids.size(1);
  const std::string expected = "expected float32 [" + std::to_string(batch) + ", " + std::to_string(length) + ", " +
                               std::to_string(metadata_.vocab_size) + "] (batch, decoder length, vocab_size)";
  if (!output.isTensor()) {
    throw DataError(describe(path_) + ": forward returned a " + output.tagKind() + ", " + expected);
  }
  torch::Tensor logits = output.toTensor();
  if (logits.scalar_type() != torch::kFloat32 || logits.dim() != 3 || logits.size(0) != batch ||
      logits.size(1) != length || logits.size(2) != metadata_.vocab_size) {
    throw DataError(describe(path_) + ": forward returned " + dtype_string(logits) + " " + shape_string(logits) + ", " +
                    expected);
  }
  return logits;
}

void ContractModel::save(const std::string& out_path, const std::string& metadata_json) const {
  parse_model_metadata(metadata_json, "metadata for '" + out_path + "'");
  // Through a stream into output_file.h's temporary file: a full disk is an IoError with the
  // temporary file removed, where LibTorch writing the file itself aborts the process (its zip
  // writer throws again from its destructor). The caller decides about replacing (check_output_path).
  write_stream_atomically(out_path, /*force=*/true, /*inputs=*/{}, [&](std::ostream& out) {
    const torch::jit::ExtraFilesMap extra{{kMetadataFile, metadata_json},
                                          {kTokenizerFile, tokenizer_.serialized_model()}};
    try {
      module_.save(out, extra);
    } catch (const c10::Error& e) {
      throw IoError("cannot write model '" + out_path + "': " + one_line(e));
    }
  });
}

}  // namespace quantppl
