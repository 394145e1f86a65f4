#include "quantppl/contract_model.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <optional>
#include <string_view>
#include <sstream>
#include <unordered_set>

#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/script.h>

#include <fmt/format.h>

#include "quantppl/archive_integrity.h"
#include "quantppl/error.h"
#include "quantppl/regular_file.h"
#include "quantppl/output_file.h"

namespace quantppl {
namespace {

constexpr const char* kMetadataFile = "quantppl.json";
constexpr const char* kTokenizerFile = "tokenizer.model";     // sentencepiece (v1, and v2 kind "sentencepiece")
constexpr const char* kBpeTokenizerFile = "tokenizer.json";   // v2 kind "bpe"
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

std::string layout_string(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.layout();
  return out.str();
}

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
    layers.push_back({name, std::move(weight), path});
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

// LibTorch reads the archive through this, from the descriptor that was verified (not by
// opening the path again, which could by then name another file). It owns a dup() of it.
//
// It also records where each stored record went: LibTorch (PyTorchStreamReader::getRecord)
// allocates a buffer of the record's size and has miniz read a stored member straight into it,
// and that buffer becomes the storage of the tensors that use the record. The storage's byte
// size, though, is taken from the pickle (numel x itemsize), not from the record: a record
// shorter than its pickle entry gives a storage that claims more bytes than its buffer has.
// Knowing which buffer received which record, storage_record() gives the true size.
class VerifiedFileAdapter : public caffe2::serialize::ReadAdapterInterface {
 public:
  VerifiedFileAdapter(const RegularFile& file, const VerifiedArchive& archive)
      : fd_(::dup(file.fd())), size_(file.size()) {
    for (const ArchiveMember& m : archive.members) {
      if (m.method == 0 && m.bytes > 0) records_.emplace(static_cast<uint64_t>(m.data_offset), &m);
    }
  }
  ~VerifiedFileAdapter() override {
    if (fd_ >= 0) ::close(fd_);
  }
  size_t size() const override { return static_cast<size_t>(size_); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    size_t done = 0;
    while (done < n) {
      const ssize_t got = ::pread(fd_, static_cast<char*>(buf) + done, n - done, static_cast<off_t>(pos + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;  // miniz turns a short read into an error
      done += static_cast<size_t>(got);
    }
    const auto it = records_.find(pos);
    if (it != records_.end() && static_cast<int64_t>(n) == it->second->bytes) {
      const std::lock_guard<std::mutex> lock(mutex_);
      received_[buf] = it->second;
    }
    return done;
  }
  // The stored record read into the buffer at `data`, or nullptr.
  const ArchiveMember* storage_record(const void* data) const {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = received_.find(data);
    return it == received_.end() ? nullptr : it->second;
  }

 private:
  int fd_;
  int64_t size_;
  std::unordered_map<uint64_t, const ArchiveMember*> records_;  // by data offset
  mutable std::mutex mutex_;
  mutable std::unordered_map<const void*, const ArchiveMember*> received_;
};

// The elements a strided tensor can touch, from its storage offset to its farthest element, must
// lie inside its storage: LibTorch's unpickler sets sizes and strides without comparing them with
// the storage record it read, so a short record (or a crafted view) would be read past its end.
void check_tensor_bounds(const torch::Tensor& t, const std::string& name, const std::string& path,
                         const VerifiedFileAdapter& reader) {
  if (!t.defined()) return;
  if (t.layout() != c10::kStrided) {
    throw DataError(fmt::format("{}: tensor '{}' has layout {}, expected a dense (strided) tensor", describe(path), name,
                                layout_string(t)));
  }
  if (!t.device().is_cpu()) {
    throw DataError(fmt::format("{}: tensor '{}' is on device {}, expected cpu", describe(path), name, t.device().str()));
  }
  // The storage against the record it was read from.
  const int64_t claimed = static_cast<int64_t>(t.storage().nbytes());
  if (claimed > 0) {
    const ArchiveMember* record = reader.storage_record(t.storage().data());
    if (record == nullptr) {
      throw DataError(fmt::format("{}: the storage of tensor '{}' is not an uncompressed record of the archive (re-save "
                                  "the model with torch.jit.save)",
                                  describe(path), name));
    }
    if (claimed > record->bytes) {
      throw DataError(fmt::format("{}: tensor '{}' has a storage of {} bytes but its storage record '{}' has only {}: "
                                  "the archive is corrupt",
                                  describe(path), name, claimed, record->name, record->bytes));
    }
  }
  if (t.numel() == 0) return;
  int64_t last = t.storage_offset();
  bool overflow = last < 0;
  for (int64_t d = 0; d < t.dim() && !overflow; ++d) {
    int64_t step = 0;
    overflow = t.size(d) <= 0 || t.stride(d) < 0 || __builtin_mul_overflow(t.size(d) - 1, t.stride(d), &step) ||
               __builtin_add_overflow(last, step, &last);
  }
  int64_t needed = 0;
  overflow = overflow || __builtin_add_overflow(last, 1, &last) ||
             __builtin_mul_overflow(last, static_cast<int64_t>(t.element_size()), &needed);
  const int64_t available = static_cast<int64_t>(t.storage().nbytes());
  if (overflow || needed > available) {
    throw DataError(fmt::format("{}: tensor '{}' ({} {}, storage offset {}) needs {} bytes of its storage record, which "
                                "has {}: the archive is corrupt",
                                describe(path), name, dtype_string(t), shape_string(t), t.storage_offset(),
                                overflow ? std::string("more than 2^63") : std::to_string(needed), available));
  }
}

// Every tensor reachable from the module (parameters, buffers, any attribute, in lists, tuples,
// dicts and objects) and every tensor constant in its code.
void check_all_tensors(const torch::jit::Module& module, const std::string& path, const VerifiedFileAdapter& reader) {
  std::unordered_set<const void*> seen;
  std::function<void(const c10::IValue&, const std::string&, int)> walk = [&](const c10::IValue& v,
                                                                              const std::string& name, int depth) {
    if (depth > 1000) throw DataError(describe(path) + ": attribute '" + name.substr(0, 200) + "...' nested too deeply");
    if (v.isTensor()) {
      check_tensor_bounds(v.toTensor(), name, path, reader);
    } else if (v.isObject()) {
      const auto object = v.toObject();
      if (!seen.insert(object.get()).second) return;
      const auto type = object->type();
      for (size_t i = 0; i < object->slots().size(); ++i) {
        const std::string attribute = i < type->numAttributes() ? type->getAttributeName(i) : std::to_string(i);
        walk(object->getSlot(i), name.empty() ? attribute : name + "." + attribute, depth + 1);
      }
    } else if (v.isList()) {
      const auto list = v.toListRef();
      for (size_t i = 0; i < list.size(); ++i) walk(list[i], name + "[" + std::to_string(i) + "]", depth + 1);
    } else if (v.isTuple()) {
      const auto& elements = v.toTupleRef().elements();
      for (size_t i = 0; i < elements.size(); ++i) walk(elements[i], name + "[" + std::to_string(i) + "]", depth + 1);
    } else if (v.isGenericDict()) {
      for (const auto& item : v.toGenericDict()) {
        walk(item.key(), name + "{key}", depth + 1);
        walk(item.value(), name + "{value}", depth + 1);
      }
    }
  };
  walk(module._ivalue(), "", 0);

  std::function<void(const torch::jit::Block*, const std::string&)> constants = [&](const torch::jit::Block* block,
                                                                                   const std::string& function) {
    for (const torch::jit::Node* node : block->nodes()) {
      if (node->kind() == c10::prim::Constant && node->output()->type()->kind() == c10::TypeKind::TensorType) {
        if (const auto value = torch::jit::toIValue(node->output())) {
          check_tensor_bounds(value->toTensor(), "constant in " + function, path, reader);
        }
      }
      for (const torch::jit::Block* sub : node->blocks()) constants(sub, function);
    }
  };
  for (const torch::jit::Function* function : module.type()->compilation_unit()->get_functions()) {
    if (!function->isGraphFunction()) continue;
    constants(torch::jit::toGraphFunction(*function).graph()->block(), function->qualname().qualifiedName());
  }
}

}  // namespace

// Removes every "___torch_mangle_<digits>." in one left-to-right scan. A scan, not
// std::regex: libstdc++'s regex executor recurses once per character matched by \d+, so a
// hostile type name with a very long digit run could overflow the stack (issue 20).
std::string demangle_torchscript_type(const std::string& qualified_name) {
  static constexpr std::string_view kMangle = "___torch_mangle_";
  std::string out;
  out.reserve(qualified_name.size());
  size_t i = 0;
  while (i < qualified_name.size()) {
    if (qualified_name.compare(i, kMangle.size(), kMangle) == 0) {
      size_t j = i + kMangle.size();
      const size_t digits_start = j;
      while (j < qualified_name.size() && qualified_name[j] >= '0' && qualified_name[j] <= '9') ++j;
      if (j > digits_start && j < qualified_name.size() && qualified_name[j] == '.') {
        i = j + 1;
        continue;
      }
    }
    out += qualified_name[i++];
  }
  return out;
}

ContractModel::ContractModel(std::string path, torch::jit::Module module, ModelMetadata metadata, Tokenizer tokenizer)
    : path_(std::move(path)), module_(std::move(module)), metadata_(std::move(metadata)), tokenizer_(std::move(tokenizer)) {}

ContractModel ContractModel::load(const std::string& path, const std::string& tokenizer_override) {
  return load_impl(path, tokenizer_override, nullptr);
}

namespace {

// A .qpack (version 2) embeds the model with each quantized Linear weight
// replaced by a zero-stride view of one float (packed_model.h). Such a weight
// gets a fresh contiguous zero tensor of its shape, which load_packed_model
// overwrites with the unpacked values; its name goes to `rebuilt`.
void rebuild_stripped_weights(torch::jit::Module& module, std::vector<std::string>* rebuilt) {
  for (const auto& item : module.named_modules()) {
    const auto type_name = item.value.type()->name();
    if (!type_name || demangle_torchscript_type(type_name->qualifiedName()) != kLinearType) continue;
    if (!item.value.hasattr("weight") || !item.value.attr("weight").isTensor()) continue;
    const torch::Tensor weight = item.value.attr("weight").toTensor();
    if (weight.dim() != 2 || weight.is_contiguous() || weight.stride(0) != 0 || weight.stride(1) != 0) continue;
    torch::jit::Module owner = item.value;
    owner.setattr("weight", torch::zeros(weight.sizes(), weight.options()));
    rebuilt->push_back(item.name.empty() ? "<root>" : item.name);
  }
}

}  // namespace

ContractModel ContractModel::load_impl(const std::string& path, const std::string& tokenizer_override,
                                       std::vector<std::string>* rebuilt_stripped) {
  const ActivityScope activity("loading " + describe(path));
  if (path.empty()) throw IoError("model path is empty");
  const RegularFile file(path, "model", kMaxModelFileBytes);
  if (file.size() == 0) {
    throw DataError(describe(path) + " is empty (0 bytes), expected a TorchScript archive");
  }
  // Every member's CRC-32 and size before LibTorch reads a byte (archive_integrity.h); the same
  // pass gives the file's SHA-256.
  const VerifiedArchive archive = verify_archive(file);

  torch::jit::ExtraFilesMap extra{{kMetadataFile, kAbsent}, {kTokenizerFile, kAbsent}, {kBpeTokenizerFile, kAbsent}};
  torch::jit::Module module;
  const auto reader = std::make_shared<VerifiedFileAdapter>(file, archive);
  try {
    module = torch::jit::load(reader, c10::nullopt, extra);
  } catch (const c10::Error& e) {
    throw DataError(describe(path) + " is not a valid TorchScript archive (" + one_line(e) + ")");
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    // torch::jit::ErrorReport and friends: TorchScript code that does not compile.
    const std::string what = one_line(std::string(e.what()));
    throw DataError(describe(path) + ": its TorchScript code does not load (" + (what.empty() ? "no message" : what) +
                    ")");
  }
  check_all_tensors(module, path, *reader);
  module.eval();

  if (extra[kMetadataFile] == kAbsent) {
    throw DataError(describe(path) + " has no " + kMetadataFile +
                    " extra file: not a quantppl model (export it with scripts/export_t5.py)");
  }
  ModelMetadata metadata = parse_model_metadata(extra[kMetadataFile], describe(path) + ": " + kMetadataFile);
  // The metadata names the tokenizer's extra file (format_version 2); only a known name is looked up.
  if (extra[metadata.tokenizer_file] == kAbsent) {
    throw DataError(describe(path) + " has no " + metadata.tokenizer_file + " extra file (export it with " +
                    (metadata.is_causal() ? "scripts/export_hf.py)" : "scripts/export_t5.py)"));
  }
  const std::optional<TokenizerKind> kind = parse_tokenizer_kind(metadata.tokenizer_kind);
  if (!kind) {  // parse_model_metadata accepts only the known kinds; kept for a future one
    throw DataError(describe(path) + ": " + kMetadataFile + ": tokenizer kind \"" + metadata.tokenizer_kind +
                    "\" is not supported (expected \"sentencepiece\" or \"bpe\")");
  }
  const std::string own_name = describe(path) + ": " + metadata.tokenizer_file;
  Tokenizer tokenizer = tokenizer_override.empty()
                            ? Tokenizer::from_bytes(*kind, std::move(extra[metadata.tokenizer_file]), own_name)
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
      own.emplace(Tokenizer::from_bytes(*kind, std::move(extra[metadata.tokenizer_file]), own_name));
    } catch (const DataError&) {
    }
    if (own) check_same_vocabulary(tokenizer, *own);
  }

  if (rebuilt_stripped != nullptr) rebuild_stripped_weights(module, rebuilt_stripped);
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
  ContractModel model(path, std::move(module), std::move(metadata), std::move(tokenizer));
  model.file_sha256_ = archive.sha256;
  return model;
}

std::vector<LinearLayer> ContractModel::linear_layers() { return find_linear_layers(module_, path_); }

torch::Tensor ContractModel::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                     const torch::Tensor& decoder_input_ids) {
  if (metadata_.is_causal()) {
    throw UsageError("forward(input_ids, attention_mask, decoder_input_ids) called on the causal " + describe(path_) +
                     " (use forward_causal)");
  }
  if (input_ids.dim() != 2 || attention_mask.sizes() != input_ids.sizes() || decoder_input_ids.dim() != 2 ||
      decoder_input_ids.size(0) != input_ids.size(0) || input_ids.scalar_type() != torch::kInt64 ||
      attention_mask.scalar_type() != torch::kInt64 || decoder_input_ids.scalar_type() != torch::kInt64) {
    throw UsageError("forward of " + describe(path_) + " needs int64 input_ids [B, S], attention_mask [B, S], "
                     "decoder_input_ids [B, T]; got " + dtype_string(input_ids) + " " + shape_string(input_ids) + ", " +
                     dtype_string(attention_mask) + " " + shape_string(attention_mask) + ", " +
                     dtype_string(decoder_input_ids) + " " + shape_string(decoder_input_ids));
  }
  return run_forward({input_ids, attention_mask, decoder_input_ids}, decoder_input_ids.size(0),
                     decoder_input_ids.size(1), "decoder length");
}

torch::Tensor ContractModel::forward_causal(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  if (!metadata_.is_causal()) {
    throw UsageError("forward_causal(input_ids, attention_mask) called on the " + metadata_.architecture + " " +
                     describe(path_) + " (use forward)");
  }
  if (input_ids.dim() != 2 || attention_mask.sizes() != input_ids.sizes() || input_ids.scalar_type() != torch::kInt64 ||
      attention_mask.scalar_type() != torch::kInt64 || input_ids.size(0) < 1 || input_ids.size(1) < 1 ||
      input_ids.size(1) > metadata_.max_length) {
    throw UsageError("forward_causal of " + describe(path_) + " needs int64 input_ids [B, S] and attention_mask [B, S] "
                     "with B >= 1 and 1 <= S <= max_length " + std::to_string(metadata_.max_length) + "; got " +
                     dtype_string(input_ids) + " " + shape_string(input_ids) + ", " + dtype_string(attention_mask) +
                     " " + shape_string(attention_mask));
  }
  return run_forward({input_ids, attention_mask}, input_ids.size(0), input_ids.size(1), "sequence length");
}

torch::Tensor ContractModel::run_forward(std::vector<c10::IValue> inputs, int64_t batch, int64_t length,
                                         const char* length_name) {
  // InferenceMode rather than NoGradGuard: it also skips version-counter and
  // view tracking, and it only marks tensors *created* inside it as inference
  // tensors. The parameters were created outside, so they stay ordinary
  // tensors and can still be edited in place under NoGradGuard between
  // forward calls (tested in ContractModelTest.InPlaceWeightEditAfterForward).
  // The returned logits are inference tensors: read them, don't edit them
  // outside InferenceMode.
  c10::InferenceMode inference;
  c10::IValue output;
  try {
    output = module_.forward(std::move(inputs));
  } catch (const c10::Error& e) {
    throw DataError(describe(path_) + ": forward failed: " + one_line(e));
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {  // torch::jit::JITException: an exception raised in TorchScript code
    const std::string what = one_line(std::string(e.what()));
    throw DataError(describe(path_) + ": forward failed: " + (what.empty() ? "no message" : what));
  }
  const std::string expected = "expected float32 [" + std::to_string(batch) + ", " + std::to_string(length) + ", " +
                               std::to_string(metadata_.vocab_size) + "] (batch, " + length_name + ", vocab_size)";
  if (!output.isTensor()) {
    throw DataError(describe(path_) + ": forward returned a " + output.tagKind() + ", " + expected);
  }
  torch::Tensor logits = output.toTensor();
  if (logits.defined() && (logits.layout() != c10::kStrided || !logits.device().is_cpu())) {
    throw DataError(describe(path_) + ": forward returned a " + c10::toString(logits.layout()) + " tensor on " +
                    logits.device().str() + ", " + expected + " dense on cpu");
  }
  if (!logits.defined() || logits.scalar_type() != torch::kFloat32 || logits.dim() != 3 || logits.size(0) != batch ||
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
                                          {metadata_.tokenizer_file, tokenizer_.serialized_model()}};
    try {
      module_.save(out, extra);
    } catch (const c10::Error& e) {
      throw IoError("cannot write model '" + out_path + "': " + one_line(e));
    }
  });
}

}  // namespace quantppl
