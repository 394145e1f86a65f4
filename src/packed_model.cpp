#include "quantppl/packed_model.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/formats/packed_sections.h"
#include "quantppl/formats/uniform_format.h"
#include "quantppl/regular_file.h"
#include "quantppl/json_input.h"
#include "quantppl/methods/method_weight.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/output_file.h"
#include "quantppl/sha256.h"
#include "quantppl/weight_backup.h"

namespace quantppl {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the .qpack sections are little-endian and written with memcpy");

int64_t align_up(int64_t n) { return (n + kQpackAlignment - 1) / kQpackAlignment * kQpackAlignment; }

int64_t code_bytes(int64_t numel, int bits) { return (numel * bits + 7) / 8; }

template <typename T>
void put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof value);
}

template <typename T>
T get(const std::string& bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof value);
  return value;
}

int64_t blocks_of(int64_t out, int64_t in, const QuantConfig& config) {
  switch (config.granularity) {
    case Granularity::kPerTensor: return 1;
    case Granularity::kPerChannel: return out;
    case Granularity::kPerGroup: return out * in / config.group_size;
  }
  return 0;
}

bool zero_points_fit_int16(const torch::Tensor& zero_point) {
  if (zero_point.numel() == 0) return true;
  const double lo = zero_point.min().item<double>();
  const double hi = zero_point.max().item<double>();
  return lo >= std::numeric_limits<int16_t>::min() && hi <= std::numeric_limits<int16_t>::max();
}

ordered_json section_json(int64_t offset, int64_t bytes) {
  ordered_json j;
  j["offset"] = offset;
  j["bytes"] = bytes;
  return j;
}

}  // namespace

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

int64_t packed_size_bytes(const std::vector<LinearLayer>& layers, const QuantConfig& config) {
  int64_t total = 0;
  for (const LinearLayer& layer : layers) {
    const int64_t blocks = num_blocks(layer.weight, config, layer.name);
    total += code_bytes(layer.weight.numel(), config.bits) + 4 * blocks;
    if (config.scheme == Scheme::kZeroPoint) total += 2 * blocks;
  }
  return total;
}

int64_t packed_size_bytes(const std::vector<LinearLayer>& layers, const QuantConfig& config,
                          const std::vector<QParams>& params) {
  if (params.size() != layers.size()) {
    throw UsageError(fmt::format("packed_size_bytes: {} layers but {} parameter sets", layers.size(), params.size()));
  }
  int64_t total = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    const int64_t blocks = params[i].scale.size(0);
    total += code_bytes(layers[i].weight.numel(), config.bits) + 4 * blocks;
    if (config.scheme == Scheme::kZeroPoint) total += (zero_points_fit_int16(params[i].zero_point) ? 2 : 4) * blocks;
  }
  return total;
}

int64_t qpack_file_bytes(int64_t header_json_bytes, const std::vector<int64_t>& section_bytes) {
  int64_t payload = 0;
  for (size_t i = 0; i < section_bytes.size(); ++i) {
    payload += i + 1 < section_bytes.size() ? align_up(section_bytes[i]) : section_bytes[i];
  }
  return align_up(kQpackPreambleBytes + header_json_bytes) + payload;
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

bool is_packed_model_file(const std::string& path) {
  try {
    // RegularFile: a FIFO must not block here (it is rejected when loaded as a model).
    const RegularFile file(path, "model", INT64_MAX);
    char magic[sizeof kQpackMagic];
    if (file.size() < static_cast<int64_t>(sizeof magic)) return false;
    file.read_at(0, magic, sizeof magic);
    return std::memcmp(magic, kQpackMagic, sizeof magic) == 0;
  } catch (const Error&) {
    return false;
  }
}

namespace {

void check_packing_inputs(const std::string& model_path, const Variant& variant, const std::string& out_path,
                          bool force) {
  if (variant.is_fp32) throw UsageError("--packed needs a quantized --variant, got fp32");
  check_output_path(out_path, force, {model_path});
  if (is_packed_model_file(model_path)) {
    throw UsageError(fmt::format("--model '{}' is already a .qpack; pack from the original contract model",
                                 model_path));
  }
}

// Appends one section to the payload at the next 64-byte boundary (zero
// padding before it); returns its offset from the payload's start.
int64_t append_section(std::string& payload, const char* data, size_t size) {
  payload.resize(static_cast<size_t>(align_up(static_cast<int64_t>(payload.size()))), '\0');
  const int64_t offset = static_cast<int64_t>(payload.size());
  payload.append(data, size);
  return offset;
}

// The file: preamble, header, zero padding to 64, payload.
std::string assemble_file(uint32_t version, const std::string& header_text, const std::string& payload) {
  std::string file;
  file.reserve(static_cast<size_t>(align_up(kQpackPreambleBytes + static_cast<int64_t>(header_text.size()))) + payload.size());
  file.append(kQpackMagic, sizeof kQpackMagic);
  put<uint32_t>(file, version);
  put<uint32_t>(file, 0);
  put<uint64_t>(file, header_text.size());
  file += sha256(header_text);
  file += header_text;
  file.resize(static_cast<size_t>(align_up(static_cast<int64_t>(file.size()))), '\0');
  file += payload;
  return file;
}

}  // namespace

PackedModelSummary write_packed_model_v1(const std::string& model_path, const Variant& variant,
                                         const std::string& include, const std::string& exclude,
                                         const std::string& out_path, bool force, bool embed) {
  check_packing_inputs(model_path, variant, out_path, force);
  if (dynamic_cast<const UniformFormat*>(variant.format.get()) == nullptr) {
    throw UsageError(fmt::format("version 1 .qpack files hold absmax/zeropoint variants only, got '{}'", variant.name));
  }
  const QuantConfig& config = variant.config;
  validate(config);
  const CodeRange range = code_range(config);

  ContractModel model = ContractModel::load(model_path);
  const std::vector<LinearLayer> layers = select_layers(model.linear_layers(), include, exclude);
  const std::string source = read_regular_file(model_path, "model", kMaxModelFileBytes);

  // Sections, in file order, with offsets relative to the payload start.
  std::string payload;
  const auto add_section = [&payload](const char* data, size_t size) { return append_section(payload, data, size); };

  PackedModelSummary summary;
  ordered_json layer_entries = ordered_json::array();
  for (const LinearLayer& layer : layers) {
    const QuantizedTensor q = quantize(layer.weight, config, layer.name);
    const torch::Tensor unsigned_codes = (q.codes - static_cast<int32_t>(range.qmin)).contiguous();
    const std::string codes = pack_codes(unsigned_codes.data_ptr<int32_t>(), unsigned_codes.numel(), config.bits);
    const torch::Tensor scales = q.params.scale.to(torch::kFloat32).contiguous();
    const int64_t blocks = scales.numel();

    ordered_json entry;
    entry["name"] = layer.name;
    entry["shape"] = {layer.weight.size(0), layer.weight.size(1)};
    entry["numel"] = layer.weight.numel();
    entry["num_blocks"] = blocks;
    ordered_json codes_json = section_json(add_section(codes.data(), codes.size()), static_cast<int64_t>(codes.size()));
    codes_json["bits"] = config.bits;
    entry["codes"] = codes_json;
    ordered_json scales_json =
        section_json(add_section(static_cast<const char*>(scales.data_ptr()), static_cast<size_t>(4 * blocks)), 4 * blocks);
    scales_json["dtype"] = "f32";
    entry["scales"] = scales_json;
    summary.packed_bytes += static_cast<int64_t>(codes.size()) + 4 * blocks;
    if (config.scheme == Scheme::kZeroPoint) {
      const bool as_int16 = zero_points_fit_int16(q.params.zero_point);
      const torch::Tensor zp = q.params.zero_point.to(as_int16 ? torch::kInt16 : torch::kFloat32).contiguous();
      const int64_t zp_bytes = (as_int16 ? 2 : 4) * blocks;
      ordered_json zp_json = section_json(add_section(static_cast<const char*>(zp.data_ptr()), static_cast<size_t>(zp_bytes)), zp_bytes);
      zp_json["dtype"] = as_int16 ? "i16" : "f32";
      entry["zero_points"] = zp_json;
      summary.packed_bytes += zp_bytes;
    } else {
      entry["zero_points"] = nullptr;
    }
    layer_entries.push_back(entry);
    summary.parameters += layer.weight.numel();
  }

  ordered_json source_json;
  source_json["path"] = model_path;
  source_json["sha256"] = sha256(source);
  source_json["bytes"] = static_cast<int64_t>(source.size());
  source_json["embedded"] = embed;
  if (embed) source_json["section"] = section_json(add_section(source.data(), source.size()), static_cast<int64_t>(source.size()));

  ordered_json header;
  header["format"] = "quantppl packed model (docs/qpack-format.md)";
  header["format_version"] = 1;
  header["variant"] = canonical_spec(variant);
  header["scheme"] = std::string(kSchemeNames.name(config.scheme));
  header["bits"] = config.bits;
  header["granularity"] = std::string(kGranularityNames.name(config.granularity));
  header["group_size"] = config.granularity == Granularity::kPerGroup ? config.group_size : 0;
  header["range"] = std::string(kRangeMethodNames.name(config.range));
  header["percentile"] = config.percentile;
  // The ARITH field of the spec is stored as its two parts.
  header["scale_form"] = std::string(kScaleFormNames.name(config.scale_form));
  header["zero_point_codes"] = std::string(kZeroPointCodesNames.name(config.zero_point_codes));
  header["qmin"] = range.qmin;
  header["qmax"] = range.qmax;
  header["include"] = include;
  header["exclude"] = exclude;
  header["source_model"] = source_json;
  header["layers"] = layer_entries;
  header["payload_bytes"] = static_cast<int64_t>(payload.size());
  header["payload_sha256"] = sha256(payload);
  const std::string header_text = header.dump(1) + "\n";

  const std::string file = assemble_file(1, header_text, payload);
  write_file_atomically(out_path, file, force, {model_path});

  summary.layers = static_cast<int64_t>(layers.size());
  summary.fp32_bytes = 4 * summary.parameters;
  summary.bits_per_weight = 8.0 * static_cast<double>(summary.packed_bytes) / static_cast<double>(summary.parameters);
  summary.file_bytes = static_cast<int64_t>(file.size());
  summary.source_bytes = static_cast<int64_t>(source.size());
  return summary;
}

namespace {

// The model's archive with every layer of `layers` holding, instead of its
// weight, a zero-stride view of one float (TorchScript serializes a tensor's
// storage, so each costs 4 bytes, and all share one storage record). The
// weights are put back before returning.
std::string stripped_model_bytes(ContractModel& model, const std::vector<LinearLayer>& layers) {
  std::set<std::string> names;
  for (const LinearLayer& layer : layers) names.insert(layer.name);
  const torch::Tensor one = torch::zeros({1}, torch::kFloat32);
  std::vector<std::pair<torch::jit::Module, torch::Tensor>> originals;
  for (const auto& item : model.module().named_modules()) {
    const std::string name = item.name.empty() ? "<root>" : item.name;
    if (names.count(name) == 0 || !item.value.hasattr("weight")) continue;
    torch::jit::Module module = item.value;
    const torch::Tensor weight = module.attr("weight").toTensor();
    originals.emplace_back(module, weight);
    module.setattr("weight", one.expand(weight.sizes()));
  }
  std::ostringstream out;
  std::optional<std::string> error;
  try {
    const torch::jit::ExtraFilesMap extra{{"quantppl.json", model.metadata().json_text},
                                          {"tokenizer.model", model.tokenizer().serialized_model()}};
    model.module().save(out, extra);
  } catch (const c10::Error& e) {
    error = e.what_without_backtrace();
  }
  for (auto& [module, weight] : originals) module.setattr("weight", weight);
  if (error) throw IoError(fmt::format("cannot serialize the model without its quantized weights: {}", *error));
  return out.str();
}

}  // namespace

PackedModelSummary write_packed_model(const std::string& model_path, const Variant& variant,
                                      const std::string& include, const std::string& exclude,
                                      const std::string& out_path, bool force, bool embed,
                                      const MethodRunOptions& methods) {
  check_packing_inputs(model_path, variant, out_path, force);
  const WeightFormat& format = *variant.format;
  ContractModel model = ContractModel::load(model_path);
  const std::vector<LinearLayer> layers = select_layers(model.linear_layers(), include, exclude);
  const std::string source = read_regular_file(model_path, "model", kMaxModelFileBytes);
  // Every layer's parameters (and a method's result), chosen from the originals.
  std::vector<std::unique_ptr<PreparedWeight>> prepared;
  {
    WeightBackup backup(layers);
    const RunCalibration calibration = calibrate_for_run(model, layers, {variant}, methods);
    prepared = prepare_method_variant(backup, variant, calibration.view(model)).layers;
  }

  std::string payload;
  const auto add_section = [&payload](const char* data, size_t size) { return append_section(payload, data, size); };

  PackedModelSummary summary;
  ordered_json layer_entries = ordered_json::array();
  for (size_t l = 0; l < layers.size(); ++l) {
    const LinearLayer& layer = layers[l];
    const torch::Tensor weight = layer.weight.contiguous();
    const PackedWeight packed = prepared[l]->pack(weight);
    ordered_json entry;
    entry["name"] = layer.name;
    entry["shape"] = {weight.size(0), weight.size(1)};
    entry["numel"] = weight.numel();
    ordered_json sections = ordered_json::array();
    for (const PackedSection& section : packed.sections) {
      // A format's pack() that disagrees with the tags' sizes is a bug, not bad input.
      if (section_bytes(section.dtype, section.count) != static_cast<int64_t>(section.bytes.size())) {
        throw std::logic_error(fmt::format("format '{}' packed section '{}' of '{}' as {} {} in {} bytes", format.spec(),
                                           section.name, layer.name, section.count, section.dtype, section.bytes.size()));
      }
      ordered_json s;
      s["name"] = section.name;
      s["dtype"] = section.dtype;
      s["count"] = section.count;
      s["offset"] = add_section(section.bytes.data(), section.bytes.size());
      s["bytes"] = static_cast<int64_t>(section.bytes.size());
      sections.push_back(s);
      summary.packed_bytes += static_cast<int64_t>(section.bytes.size());
    }
    entry["sections"] = sections;
    layer_entries.push_back(entry);
    summary.parameters += weight.numel();
  }
  summary.layers = static_cast<int64_t>(layers.size());
  summary.fp32_bytes = 4 * summary.parameters;
  summary.bits_per_weight = 8.0 * static_cast<double>(summary.packed_bytes) / static_cast<double>(summary.parameters);

  ordered_json source_json;
  source_json["path"] = model_path;
  source_json["sha256"] = sha256(source);
  source_json["bytes"] = static_cast<int64_t>(source.size());
  source_json["embedded"] = embed;
  if (embed) {
    const std::string stripped = stripped_model_bytes(model, layers);
    ordered_json section = section_json(add_section(stripped.data(), stripped.size()), static_cast<int64_t>(stripped.size()));
    section["sha256"] = sha256(stripped);
    source_json["section"] = section;
  }

  ordered_json header;
  header["format"] = "quantppl packed model (docs/qpack-format.md)";
  header["format_version"] = kQpackFormatVersion;
  header["variant"] = canonical_spec(variant);
  header["weight_format"] = format.spec();
  header["bits_per_weight"] = summary.bits_per_weight;
  header["packed_bytes"] = summary.packed_bytes;
  header["fp32_bytes"] = summary.fp32_bytes;
  header["include"] = include;
  header["exclude"] = exclude;
  header["source_model"] = source_json;
  header["layers"] = layer_entries;
  header["payload_bytes"] = static_cast<int64_t>(payload.size());
  header["payload_sha256"] = sha256(payload);
  const std::string file = assemble_file(kQpackFormatVersion, header.dump(1) + "\n", payload);
  write_file_atomically(out_path, file, force, {model_path});
  summary.file_bytes = static_cast<int64_t>(file.size());
  summary.source_bytes = static_cast<int64_t>(source.size());
  return summary;
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

PackedModel read_packed_model(const std::string& path) {
  return parse_packed_model(read_regular_file(path, "packed model", kMaxModelFileBytes), path);
}

PackedModel parse_packed_model(std::string bytes, const std::string& path) {
  PackedModel m;
  m.path = path;
  m.bytes = std::move(bytes);
  const std::string& b = m.bytes;
  const int64_t size = static_cast<int64_t>(b.size());
  const auto fail = [&path](const std::string& what) -> void {
    throw DataError(fmt::format("packed model '{}': {}", path, what));
  };

  if (size < static_cast<int64_t>(sizeof kQpackMagic) || std::memcmp(b.data(), kQpackMagic, sizeof kQpackMagic) != 0) {
    fail("bad magic: the file does not start with \"QPPLPACK\" (not a .qpack file)");
  }
  if (size < kQpackPreambleBytes) {
    fail(fmt::format("truncated: {} bytes, shorter than the {}-byte preamble", size, kQpackPreambleBytes));
  }
  const uint32_t version = get<uint32_t>(b, 8);
  if (version < kQpackOldestReadableVersion || version > kQpackFormatVersion) {
    fail(fmt::format("format version {} is not supported (this quantppl reads versions {} to {})", version,
                     kQpackOldestReadableVersion, kQpackFormatVersion));
  }
  m.version = version;
  if (get<uint32_t>(b, 12) != 0) fail("reserved preamble field (bytes 12-15) is not 0");
  const uint64_t header_len = get<uint64_t>(b, 16);
  if (header_len > static_cast<uint64_t>(size - kQpackPreambleBytes)) {
    fail(fmt::format("truncated: the header length is {} bytes but the file has only {} after the preamble",
                     header_len, size - kQpackPreambleBytes));
  }
  if (header_len > static_cast<uint64_t>(kMaxQpackHeaderBytes)) {
    fail(fmt::format("the header length is {} bytes, more than the {} limit", header_len,
                     format_bytes(kMaxQpackHeaderBytes)));
  }
  m.header_bytes = static_cast<int64_t>(header_len);
  const std::string header_text = b.substr(kQpackPreambleBytes, header_len);
  if (sha256(header_text) != b.substr(24, 64)) {
    fail("header SHA-256 mismatch (preamble bytes 24-87): the JSON header is corrupt");
  }
  m.payload_offset = align_up(kQpackPreambleBytes + m.header_bytes);
  if (m.payload_offset > size) {
    fail(fmt::format("truncated: {} bytes, the payload should start at byte {}", size, m.payload_offset));
  }
  for (int64_t i = kQpackPreambleBytes + m.header_bytes; i < m.payload_offset; ++i) {
    if (b[static_cast<size_t>(i)] != '\0') fail(fmt::format("header padding byte {} is not zero", i));
  }

  const JsonReader r(fmt::format("packed model '{}': header", path));
  const json header = parse_json(header_text, r.source());
  r.require_object(header, "");
  r.integer(header, "format_version", "", version, version);
  // Version 2: the variant and its format, each in canonical spelling.
  std::shared_ptr<const WeightFormat> v2_format;
  if (version >= 2) {
    const std::string spec = r.string(header, "variant", "");
    try {
      m.variant = parse_variant(spec);
    } catch (const UsageError& e) {
      r.fail("variant", std::string("is not a variant this quantppl knows: ") + e.what());
    }
    if (m.variant.is_fp32) r.fail("variant", "is fp32: a packed model holds a quantized variant");
    if (canonical_spec(m.variant) != spec) {
      r.fail("variant", fmt::format("\"{}\" is not in canonical spelling (\"{}\")", spec, canonical_spec(m.variant)));
    }
    m.variant.name = spec;
    v2_format = m.variant.format;
    const std::string weight_format = r.string(header, "weight_format", "");
    if (weight_format != v2_format->spec()) {
      r.fail("weight_format", fmt::format("is \"{}\" but the variant's format is \"{}\"", weight_format, v2_format->spec()));
    }
  }
  // Version 1: the quantization config, checked against the canonical spec.
  QuantConfig& config = m.variant.config;
  CodeRange codes_range{0, 0};
  if (version == 1) {
  const auto enum_field = [&](const auto& table, const char* key) {
    const std::string name = r.string(header, key, "");
    const auto value = table.find(name);
    if (!value) r.fail(key, fmt::format("must be {}, got \"{}\"", table.choices_in_words(), name));
    return *value;
  };
  config.scheme = enum_field(kSchemeNames, "scheme");
  config.bits = static_cast<int>(r.integer(header, "bits", "", kMinBits, kMaxBits));
  config.granularity = enum_field(kGranularityNames, "granularity");
  const int64_t group_size = r.integer(header, "group_size", "", 0, INT64_MAX);
  if (config.granularity == Granularity::kPerGroup) {
    if (group_size <= 0) r.fail("group_size", "must be > 0 for granularity \"group\"");
    config.group_size = group_size;
  }
  config.range = enum_field(kRangeMethodNames, "range");
  config.percentile = r.number(header, "percentile", "");
  config.scale_form = enum_field(kScaleFormNames, "scale_form");
  config.zero_point_codes = enum_field(kZeroPointCodesNames, "zero_point_codes");
  if (!arithmetic_of(config)) {
    r.fail("scale_form", fmt::format("\"{}\" with zero_point_codes \"{}\" is not an arithmetic quantppl writes",
                                     kScaleFormNames.name(config.scale_form),
                                     kZeroPointCodesNames.name(config.zero_point_codes)));
  }
  try {
    validate(config);
  } catch (const UsageError& e) {
    fail(std::string("invalid quantization config: ") + e.what());
  }
  codes_range = code_range(config);
  if (r.integer(header, "qmin", "", INT32_MIN, INT32_MAX) != codes_range.qmin ||
      r.integer(header, "qmax", "", INT32_MIN, INT32_MAX) != codes_range.qmax) {
    r.fail("qmin", fmt::format("/qmax must be {}/{} for this config", codes_range.qmin, codes_range.qmax));
  }
  m.variant.format = std::make_shared<UniformFormat>(config);
  m.variant.name = canonical_spec(m.variant);
  const std::string spec = r.string(header, "variant", "");
  // Writers before the ARITH field spelled a tutorial-arithmetic variant
  // without it; its scale_form and zero_point_codes fields were always stored.
  QuantConfig without_arithmetic = config;
  set_arithmetic(without_arithmetic, Arithmetic::kNumpy);
  if (spec != m.variant.name && spec != uniform_spec(without_arithmetic)) {
    r.fail("variant", fmt::format("is \"{}\" but the config fields say \"{}\"", spec, m.variant.name));
  }
  }  // version 1
  m.include = r.string(header, "include", "");
  m.exclude = r.string(header, "exclude", "");

  // The payload: its size and checksum.
  m.payload_bytes = r.integer(header, "payload_bytes", "", 0, INT64_MAX);
  if (m.payload_bytes != size - m.payload_offset) {
    fail(fmt::format("truncated or padded: {} bytes, but header + payload_bytes say {}", size,
                     m.payload_offset + std::min(m.payload_bytes, INT64_MAX - m.payload_offset)));
  }
  if (sha256(std::string_view(b).substr(static_cast<size_t>(m.payload_offset))) != r.string(header, "payload_sha256", "")) {
    fail("payload_sha256 mismatch: the data sections are corrupt");
  }

  // Sections must lie in the payload, 64-aligned, in order and not overlap.
  int64_t section_end = 0;
  const auto section = [&](const json& obj, const std::string& field, int64_t expected_bytes) {
    const int64_t offset = r.integer(obj, "offset", field, 0, m.payload_bytes);
    const int64_t bytes = r.integer(obj, "bytes", field, 0, m.payload_bytes);
    if (offset % kQpackAlignment != 0) r.fail(field + ".offset", fmt::format("{} is not a multiple of 64", offset));
    if (bytes != expected_bytes) r.fail(field + ".bytes", fmt::format("must be {}, got {}", expected_bytes, bytes));
    if (offset < section_end) r.fail(field + ".offset", fmt::format("{} overlaps the previous section", offset));
    if (bytes > m.payload_bytes - offset) {
      r.fail(field, fmt::format("[{}, {}) lies beyond the payload's {} bytes", offset, offset + bytes, m.payload_bytes));
    }
    for (int64_t i = section_end; i < offset; ++i) {
      if (b[static_cast<size_t>(m.payload_offset + i)] != '\0') {
        r.fail(field + ".offset", fmt::format("padding before it (payload byte {}) is not zero", i));
      }
    }
    section_end = offset + bytes;
    return m.payload_offset + offset;
  };

  // A header that names a variant stores at least one layer, each once: an empty or duplicated
  // list is a corrupt file, not an fp32 model (and a duplicate would be dequantized twice).
  const json& layers = r.array(header, "layers", "");
  if (layers.empty()) r.fail("layers", fmt::format("is empty, but the header names the variant \"{}\"", m.variant.name));
  std::set<std::string> layer_names;
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string field = fmt::format("layers[{}]", i);
    const json& entry = layers[i];
    PackedLayer layer;
    layer.name = r.string(entry, "name", field);
    if (layer.name.empty()) r.fail(field + ".name", "is empty");
    if (!layer_names.insert(layer.name).second) r.fail(field + ".name", "\"" + layer.name + "\" appears twice in layers");
    const json& shape = r.array(entry, "shape", field);
    if (shape.size() != 2) r.fail(field + ".shape", "must be [out_features, in_features], got " + JsonReader::shown(shape));
    layer.out_features = r.integer_value(shape[0], field + ".shape[0]", 1, int64_t{1} << 31);
    layer.in_features = r.integer_value(shape[1], field + ".shape[1]", 1, int64_t{1} << 31);
    // Both factors are at most 2^31, so the product does not overflow; a layer needs at least one
    // bit a weight, so one that needs more bits than the payload has is corrupt, and rejecting it
    // here keeps every later size (codes, blocks, the unpacked int32 copy) small.
    const int64_t numel = layer.out_features * layer.in_features;
    if (numel / 8 > m.payload_bytes) {
      r.fail(field + ".shape", fmt::format("{} has {} weights, more than the payload's {} bytes can hold",
                                           JsonReader::shown(shape), numel, m.payload_bytes));
    }
    if (r.integer(entry, "numel", field, 0, INT64_MAX) != numel) {
      r.fail(field + ".numel", fmt::format("must be {} for shape {}", numel, JsonReader::shown(shape)));
    }
    if (version == 1) {
      if (config.granularity == Granularity::kPerGroup && layer.in_features % config.group_size != 0) {
        r.fail(field + ".shape", fmt::format("in_features {} is not a multiple of group_size {}", layer.in_features,
                                             config.group_size));
      }
      const int64_t num_blocks = blocks_of(layer.out_features, layer.in_features, config);
      if (r.integer(entry, "num_blocks", field, 0, INT64_MAX) != num_blocks) {
        r.fail(field + ".num_blocks", fmt::format("must be {} for shape {} and granularity {}", num_blocks,
                                                  JsonReader::shown(shape), kGranularityNames.name(config.granularity)));
      }
      const json& codes = r.member(entry, "codes", field);
      if (r.integer(codes, "bits", field + ".codes", 0, 64) != config.bits) {
        r.fail(field + ".codes.bits", fmt::format("must equal bits {}", config.bits));
      }
      const int64_t codes_bytes = code_bytes(numel, config.bits);
      layer.sections.push_back({"codes", code_dtype(config.bits), numel, section(codes, field + ".codes", codes_bytes),
                                codes_bytes});
      const json& scales = r.member(entry, "scales", field);
      if (r.string(scales, "dtype", field + ".scales") != "f32") r.fail(field + ".scales.dtype", "must be \"f32\"");
      layer.sections.push_back({"scales", "f32", num_blocks, section(scales, field + ".scales", 4 * num_blocks),
                                4 * num_blocks});
      const json& zps = r.member(entry, "zero_points", field);
      if (config.scheme == Scheme::kAbsmax) {
        if (!zps.is_null()) r.fail(field + ".zero_points", "must be null for absmax (z = 0)");
      } else {
        const std::string dtype = r.string(zps, "dtype", field + ".zero_points");
        if (dtype != "i16" && dtype != "f32") r.fail(field + ".zero_points.dtype", "must be \"i16\" or \"f32\", got \"" + dtype + "\"");
        const int64_t zp_bytes = (dtype == "f32" ? 4 : 2) * num_blocks;
        layer.sections.push_back({"zero_points", dtype, num_blocks, section(zps, field + ".zero_points", zp_bytes), zp_bytes});
      }
    } else {
      // Generic sections: a known dtype, bytes that agree with count, in the payload (section()).
      const json& sections = r.array(entry, "sections", field);
      if (sections.empty() || sections.size() > 16) {
        r.fail(field + ".sections", fmt::format("must list 1 to 16 sections, got {}", sections.size()));
      }
      for (size_t k = 0; k < sections.size(); ++k) {
        const std::string sfield = fmt::format("{}.sections[{}]", field, k);
        PackedLayerSection ls;
        ls.name = r.string(sections[k], "name", sfield);
        ls.dtype = r.string(sections[k], "dtype", sfield);
        if (dtype_bits(ls.dtype) == 0) {
          r.fail(sfield + ".dtype", fmt::format("\"{}\" is not a dtype this quantppl knows (u1..u8, i16, f16, f32, e8m0, e4m3)",
                                                ls.dtype));
        }
        // At most 8 * payload_bytes elements of at least one bit each.
        ls.count = r.integer(sections[k], "count", sfield, 0, m.payload_bytes * 8);
        ls.bytes = section_bytes(ls.dtype, ls.count);
        ls.offset = section(sections[k], sfield, ls.bytes);
        layer.sections.push_back(ls);
      }
    }

    // Every section as the format expects it (names, dtypes, counts, sizes), and every value it
    // holds valid (codes in range, finite scales): the format's unpack checks both.
    const WeightFormat& format = *m.variant.format;
    PackedWeight packed;
    packed.out_features = layer.out_features;
    packed.in_features = layer.in_features;
    int64_t total = 0;
    bool wide_zero_points = false;
    for (const PackedLayerSection& ls : layer.sections) {
      packed.sections.push_back({ls.name, ls.dtype, ls.count, b.substr(static_cast<size_t>(ls.offset), static_cast<size_t>(ls.bytes))});
      total += ls.bytes;
      wide_zero_points = wide_zero_points || (ls.name == "zero_points" && ls.dtype == "f32");
    }
    try {
      format.group_columns(layer.in_features, layer.name);
      // The uniform format stores zero points as float32 when one does not fit int16: the one
      // case where a layer takes more than packed_bytes (uniform_format.h).
      const bool scaled = stores_input_scales(m.variant.method);
      const int64_t expected =
          format.packed_bytes(layer.out_features, layer.in_features) + (scaled ? 4 * layer.in_features : 0);
      if (total != expected && !wide_zero_points) {
        r.fail(field + ".sections", fmt::format("hold {} bytes, but {} stores a [{}, {}] weight in {}", total, format.spec(),
                                                layer.out_features, layer.in_features, expected));
      }
      m.weights.push_back(unpack_method_weight(format, scaled, std::move(packed), layer.name));
    } catch (const DataError& e) {
      if (std::string_view(e.what()).rfind(r.source(), 0) == 0) throw;  // already names the file and field
      r.fail(field, e.what());
    } catch (const UsageError& e) {
      r.fail(field, e.what());
    }
    m.layers.push_back(std::move(layer));
  }

  const json& source = r.member(header, "source_model", "");
  m.source_path = r.string(source, "path", "source_model");
  m.source_sha256 = r.string(source, "sha256", "source_model");
  m.source_bytes = r.integer(source, "bytes", "source_model", 0, kMaxModelFileBytes);
  m.embedded = r.boolean(source, "embedded", "source_model");
  if (m.embedded && version == 1) {
    m.embedded_bytes = m.source_bytes;
    m.embedded_offset = section(r.member(source, "section", "source_model"), "source_model.section", m.source_bytes);
    if (sha256(m.embedded_model()) != m.source_sha256) {
      r.fail("source_model.sha256", "does not match the embedded model's bytes");
    }
  } else if (m.embedded) {
    // The original model minus its quantized weights: its own size and digest.
    const json& embedded = r.member(source, "section", "source_model");
    m.embedded_stripped = true;
    m.embedded_bytes = r.integer(embedded, "bytes", "source_model.section", 1, m.payload_bytes);
    m.embedded_offset = section(embedded, "source_model.section", m.embedded_bytes);
    if (sha256(m.embedded_model()) != r.string(embedded, "sha256", "source_model.section")) {
      r.fail("source_model.section.sha256", "does not match the embedded model's bytes");
    }
  }
  if (section_end != m.payload_bytes) {
    fail(fmt::format("payload_bytes is {} but its sections end at {}", m.payload_bytes, section_end));
  }
  m.file_sha256 = sha256(b);
  return m;
}

std::string_view PackedModel::embedded_model() const {
  if (!embedded) return {};
  return std::string_view(bytes).substr(static_cast<size_t>(embedded_offset), static_cast<size_t>(embedded_bytes));
}

int64_t PackedLayer::offset_of(const std::string& section) const {
  for (const PackedLayerSection& s : sections) {
    if (s.name == section) return s.offset;
  }
  return -1;
}

PackedWeight PackedModel::packed(size_t i) const {
  const PackedLayer& layer = layers.at(i);
  PackedWeight packed;
  packed.out_features = layer.out_features;
  packed.in_features = layer.in_features;
  for (const PackedLayerSection& s : layer.sections) {
    packed.sections.push_back({s.name, s.dtype, s.count, bytes.substr(static_cast<size_t>(s.offset), static_cast<size_t>(s.bytes))});
  }
  return packed;
}

QuantizedTensor PackedModel::quantized(size_t i) const {
  const auto* uniform = dynamic_cast<const UniformFormat*>(variant.format.get());
  if (uniform == nullptr) {
    throw UsageError(fmt::format("packed model '{}': format {} has no integer codes and QParams (not absmax/zeropoint)",
                                 path, variant.format ? variant.format->spec() : "none"));
  }
  return uniform->unpack_codes(packed(i), layers.at(i).name);
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

namespace {

// The embedded model goes through ContractModel::load (which takes a path) as
// a temporary file, removed again as soon as it is loaded (the destructor). It
// is registered with the interrupt handler (output_file.h) until then, so that
// a Ctrl-C while a large model is written or loaded leaves nothing in $TMPDIR.
struct EmbeddedModelFile {
  std::string path;
  EmbeddedModelFile() = default;
  EmbeddedModelFile(const EmbeddedModelFile&) = delete;
  EmbeddedModelFile& operator=(const EmbeddedModelFile&) = delete;
  ~EmbeddedModelFile() {
    if (!path.empty()) ::unlink(path.c_str());
  }
};

void write_embedded(const PackedModel& m, EmbeddedModelFile* out) {
  namespace fs = std::filesystem;
  const TempFile temp_file = create_temp_file((fs::path(temp_directory()) / "quantppl-embedded-").string(), "", 0600);
  if (temp_file.fd < 0) {
    throw IoError(fmt::format("packed model '{}': cannot create a temporary file: {}", m.path,
                              std::strerror(temp_file.error)));
  }
  out->path = temp_file.path;
  const int fd = temp_file.fd;
  const std::string_view data = m.embedded_model();
  size_t written = 0;
  while (written < data.size()) {
    const ssize_t n = ::write(fd, data.data() + written, data.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      throw IoError(fmt::format("packed model '{}': cannot write a temporary file: {}", m.path, std::strerror(errno)));
    }
    written += static_cast<size_t>(n);
  }
  ::close(fd);
}

ContractModel load_referenced(const PackedModel& m, const std::string& tokenizer_override) {
  namespace fs = std::filesystem;
  std::string source = m.source_path;
  std::error_code ec;
  if (fs::path(source).is_relative() && !fs::exists(source, ec)) {
    const fs::path beside = fs::path(m.path).parent_path() / source;
    if (fs::exists(beside, ec)) source = beside.string();
  }
  if (!fs::exists(source, ec)) {
    throw IoError(fmt::format("packed model '{}': its source model '{}' (not embedded) cannot be found", m.path,
                              m.source_path));
  }
  // The kind and size first: a FIFO or a device (/dev/zero) must fail here, at once, not hash forever.
  {
    const RegularFile file(source, fmt::format("packed model '{}': source model", m.path), kMaxModelFileBytes);
    if (file.size() != m.source_bytes) {
      throw DataError(fmt::format("packed model '{}': source model '{}' is {} bytes, expected {} (it changed since packing)",
                                  m.path, source, file.size(), m.source_bytes));
    }
  }
  const auto changed = [&](const std::string& digest) {
    return DataError(fmt::format("packed model '{}': source model '{}' has sha256 {}, expected {} (it changed since packing)",
                                 m.path, source, digest, m.source_sha256));
  };
  // ContractModel::load verifies the archive and hashes it in the same pass. If it rejects the
  // file, a changed file is the likelier story, and the more useful message: hash it to tell.
  std::optional<ContractModel> model;
  try {
    model.emplace(ContractModel::load(source, tokenizer_override));
  } catch (const DataError& e) {
    const std::string digest = sha256_file(source);
    if (digest != m.source_sha256) throw changed(digest);
    throw DataError(fmt::format("packed model '{}': source model: {}", m.path, e.what()));
  }
  if (model->file_sha256() != m.source_sha256) throw changed(model->file_sha256());
  return std::move(*model);
}

}  // namespace

ContractModel load_packed_model(const std::string& path, const std::string& tokenizer_override) {
  const PackedModel m = read_packed_model(path);
  std::vector<std::string> rebuilt;  // stripped weights of the embedded model: each must be restored below
  std::optional<ContractModel> loaded;
  if (m.embedded) {
    EmbeddedModelFile temp;
    write_embedded(m, &temp);
    try {
      loaded.emplace(ContractModel::load_impl(temp.path, tokenizer_override, m.embedded_stripped ? &rebuilt : nullptr));
    } catch (const DataError& e) {
      throw DataError(fmt::format("packed model '{}': embedded contract model: {}", m.path, e.what()));
    }
  } else {
    loaded.emplace(load_referenced(m, tokenizer_override));
  }
  ContractModel& model = *loaded;
  std::map<std::string, torch::Tensor> weights;
  for (const LinearLayer& layer : model.linear_layers()) weights.emplace(layer.name, layer.weight);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const PackedLayer& layer = m.layers[i];
    const auto it = weights.find(layer.name);
    if (it == weights.end()) {
      throw DataError(fmt::format("packed model '{}': layers[{}] '{}' is not a Linear layer of its source model", path,
                                  i, layer.name));
    }
    torch::Tensor& weight = it->second;
    if (weight.size(0) != layer.out_features || weight.size(1) != layer.in_features) {
      throw DataError(fmt::format("packed model '{}': layers[{}] '{}' has shape [{}, {}], the model's weight is [{}, {}]",
                                  path, i, layer.name, layer.out_features, layer.in_features, weight.size(0),
                                  weight.size(1)));
    }
    weight.copy_(m.weights[i]);
  }
  std::set<std::string> restored;
  for (const PackedLayer& layer : m.layers) restored.insert(layer.name);
  for (const std::string& name : rebuilt) {
    if (restored.count(name) == 0) {
      throw DataError(fmt::format("packed model '{}': the embedded model's Linear layer '{}' has no weight (stripped) "
                                  "and no packed layer restores it", path, name));
    }
  }
  model.file_sha256_ = m.file_sha256;
  return std::move(*loaded);
}

ContractModel load_model_file(const std::string& path, const std::string& tokenizer_override) {
  if (is_packed_model_file(path)) return load_packed_model(path, tokenizer_override);
  return ContractModel::load(path, tokenizer_override);
}

}  // namespace quantppl
