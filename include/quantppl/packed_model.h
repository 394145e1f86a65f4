// Real low-bit storage: the `.qpack` file format (docs/qpack-format.md).
//
// A .qpack holds a quantized variant of a contract model at its real width:
// every selected Linear weight as its format's packed sections (codes at
// their width, scales in their real type: formats/weight_format.h's
// PackedWeight), with the contract model embedded (the graph and every
// parameter that stays float32, but NOT the quantized Linear weights) or
// referenced by path + SHA-256.
//
// ---------------------------------------------------------------------------
// Layout (all integers little-endian; offsets in bytes)
// ---------------------------------------------------------------------------
//   0   8   magic "QPPLPACK"
//   8   4   u32 format version (2; version 1 files are still read)
//   12  4   u32 reserved, 0
//   16  8   u64 H, the length of the JSON header
//   24  64  SHA-256 of the JSON header, 64 lowercase ASCII hex digits
//   88  H   the JSON header (UTF-8), see below
//       ..  zero bytes up to P = align64(88 + H): the payload start
//   P   ..  the payload: sections, each starting at a multiple of 64 from P
//           (so at a multiple of 64 in the file), zero bytes between them,
//           none after the last. File size = P + payload_bytes.
//
// Version 2 JSON header: {format, format_version: 2, variant (canonical
// spec, with its methods), weight_format (the format's canonical spec),
// bits_per_weight, packed_bytes, fp32_bytes, include, exclude,
// source_model: {path, sha256, bytes, embedded, section?: {offset, bytes,
// sha256}}, layers: [{name, shape: [out, in], numel, sections: [{name, dtype,
// count, offset, bytes}]}], payload_bytes, payload_sha256}. Section offsets
// are relative to P; a layer's sections are its PackedWeight's, in order;
// dtype tags and the code bit stream are formats/packed_sections.h's.
// source_model describes the ORIGINAL model file (its SHA-256 and size); the
// embedded section is that model re-saved with every quantized Linear weight
// replaced by a zero-stride view of a single float (serialized as 4 bytes),
// and `section.sha256` is its own digest. Loading rebuilds those weights from
// the codes, bit for bit as the variant's fake-quantize.
//
// Version 1 (uniform formats only): header fields scheme, bits, granularity,
// group_size, range, percentile, scale_form, zero_point_codes, qmin, qmax and
// per layer num_blocks, codes: {offset, bytes, bits}, scales: {offset, bytes,
// dtype "f32"}, zero_points: null | {offset, bytes, dtype "i16"|"f32"}, with
// the whole float32 model embedded. Read as the equivalent sections
// ("codes" uB, "scales" f32, "zero_points" i16|f32).
//
// Size of the quantized layers (what `compare` reports as packed_bytes): the
// sum of every layer's section bytes, e.g. for absmax/zeropoint
//   ceil(numel * b / 8) + 4 * num_blocks (+ 2 * num_blocks zero points)
// and bits_per_weight = 8 * packed_bytes / weights. Section alignment, the
// header and the embedded model are not counted there; the file adds them
// (qpack_file_bytes).
//
// Why this design: the fixed preamble and 64-byte-aligned sections let a
// reader mmap the file and point SIMD loads straight at codes and scales; the
// JSON header is readable with `head -c` and any JSON tool; no protobuf, zip
// or flatbuffers dependency. Every byte is checked on read: the header by its
// SHA-256 in the preamble, the sections by payload_sha256, the padding must be
// zero, every offset + size must lie within the file, every section's dtype,
// count and bytes must agree, and every layer must unpack with its format
// (WeightFormat::unpack: codes in range, finite scales).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "quantppl/contract_model.h"
#include "quantppl/formats/packed_sections.h"  // pack_codes, unpack_codes (declared here before)
#include "quantppl/formats/weight_format.h"
#include "quantppl/quantize.h"
#include "quantppl/methods/variant_methods.h"
#include "quantppl/variant_spec.h"

namespace quantppl {

inline constexpr char kQpackMagic[8] = {'Q', 'P', 'P', 'L', 'P', 'A', 'C', 'K'};
constexpr uint32_t kQpackFormatVersion = 2;
constexpr uint32_t kQpackOldestReadableVersion = 1;
constexpr int64_t kQpackAlignment = 64;
constexpr int64_t kQpackPreambleBytes = 88;  // magic, version, reserved, H, header SHA-256 (hex)
// Largest JSON header read (flan-t5-small's 190 layers take ~60 KB).
constexpr int64_t kMaxQpackHeaderBytes = int64_t{16} << 20;

// One stored section of a layer, where it is in PackedModel::bytes.
struct PackedLayerSection {
  std::string name;
  std::string dtype;
  int64_t count = 0;
  int64_t offset = 0;  // absolute file offset
  int64_t bytes = 0;
};

// One stored layer.
struct PackedLayer {
  std::string name;
  int64_t out_features = 0;
  int64_t in_features = 0;
  std::vector<PackedLayerSection> sections;
  // The offset of the section named `section`, or -1.
  int64_t offset_of(const std::string& section) const;
};

struct PackedModel {
  std::string path;
  uint32_t version = 0;
  Variant variant;  // name = canonical spec; variant.format reads the sections
  std::string include;
  std::string exclude;
  std::string source_path;    // as given when packing
  std::string source_sha256;  // of the original contract model's bytes
  int64_t source_bytes = 0;
  bool embedded = false;
  int64_t embedded_offset = -1;  // absolute file offset of the embedded .pt, if embedded
  int64_t embedded_bytes = 0;
  // Version 2: the embedded model has its quantized Linear weights stripped (zero-stride views).
  bool embedded_stripped = false;
  std::vector<PackedLayer> layers;
  std::vector<torch::Tensor> weights;  // per layer: the unpacked x_hat, float32 [out, in] (checked on read)
  int64_t header_bytes = 0;   // H
  int64_t payload_offset = 0; // P
  int64_t payload_bytes = 0;
  std::string bytes;  // the whole file
  std::string file_sha256;  // of `bytes`

  // The layer's sections as its format's PackedWeight (copies the bytes).
  PackedWeight packed(size_t layer) const;
  // Uniform formats: the layer's codes (int32 [out, in], in [qmin, qmax]) and
  // parameters ([num_blocks, 1] float32), ready for dequantize(). UsageError
  // for other formats.
  QuantizedTensor quantized(size_t layer) const;
  // The embedded contract model's bytes (empty if referenced).
  std::string_view embedded_model() const;
};

struct PackedModelSummary {
  int64_t layers = 0;
  int64_t parameters = 0;
  int64_t packed_bytes = 0;  // the formula above
  int64_t fp32_bytes = 0;
  double bits_per_weight = 0;  // 8 * packed_bytes / parameters
  int64_t file_bytes = 0;
  int64_t source_bytes = 0;  // the original model file's size (file_bytes / source_bytes: what packing saved)
};

// Quantizes the selected Linear layers (include/exclude as select_layers) of
// the contract model at `model_path` with `variant` and writes `out_path`
// atomically (temporary file + rename; an existing file only with `force`).
// `embed`: store the whole model file in the .qpack; otherwise reference it
// by the path as given plus its SHA-256. UsageError for fp32 or a .qpack
// input (re-packing would lose which layers the input had quantized).
// A variant with a method (+gptq, +awq, +hqq, ...) is computed with
// `methods` (its calibration; methods/variant_methods.h) and stored at the
// format's real width too (methods/method_weight.h: an AWQ layer adds an
// "input_scales" section).
PackedModelSummary write_packed_model(const std::string& model_path, const Variant& variant,
                                      const std::string& include, const std::string& exclude,
                                      const std::string& out_path, bool force, bool embed,
                                      const MethodRunOptions& methods = {});
// The version 1 layout (uniform formats only, the whole float32 model
// embedded), as quantppl wrote it before version 2: for the tests that keep
// version 1 files readable.
PackedModelSummary write_packed_model_v1(const std::string& model_path, const Variant& variant,
                                         const std::string& include, const std::string& exclude,
                                         const std::string& out_path, bool force, bool embed);

// Reads and validates every byte (see above): DataError naming the file and
// the field for bad magic, an unknown version, a truncated file, a header
// that does not parse or is inconsistent (shape, numel, an unknown dtype, a
// section whose count and bytes disagree or that its format does not expect,
// offsets out of the file or overlapping), a checksum mismatch, a code outside
// the format's range, a scale that is not finite, an empty layer list or a layer named
// twice, a shape whose weights could not fit the payload, a header longer than
// kMaxQpackHeaderBytes or nested deeper than kMaxJsonDepth (json_input.h).
// IoError if it cannot be read or is not a regular file; DataError if it is
// larger than kMaxModelFileBytes (regular_file.h).
PackedModel read_packed_model(const std::string& path);
// The same checks on a file's bytes already in memory (tests, fuzz/qpack_fuzz.cpp); `path` names
// it in messages.
PackedModel parse_packed_model(std::string bytes, const std::string& path);

// The contract model the .qpack embeds or references (a referenced path
// that is relative is tried as given, then beside the .qpack; it must be a
// regular file (IoError otherwise: a FIFO or /dev/zero fails at once) of the
// recorded size and SHA-256: DataError otherwise), with every stored layer's weight
// overwritten by its dequantized value. DataError if a stored layer is not a
// Linear layer of that model or has another shape.
ContractModel load_packed_model(const std::string& path, const std::string& tokenizer_override = "");

// True if the file starts with the .qpack magic (false if unreadable).
bool is_packed_model_file(const std::string& path);

// A .qpack (by its magic) or a TorchScript contract model.
ContractModel load_model_file(const std::string& path, const std::string& tokenizer_override = "");

// packed_bytes of these layers under the uniform `config` (formula above),
// assuming int16 zero points; with the chosen parameters (one QParams per
// layer) it is exact: layers whose zero points do not fit int16 count 4 bytes
// a block. (Any format: model_quantizer.h's prepared_packed_bytes.)
int64_t packed_size_bytes(const std::vector<LinearLayer>& layers, const QuantConfig& config);
int64_t packed_size_bytes(const std::vector<LinearLayer>& layers, const QuantConfig& config,
                          const std::vector<QParams>& params);

// The file size for a JSON header of `header_json_bytes` and these sections
// in order: align64(88 + H) + the sections, each but the last padded to 64.
int64_t qpack_file_bytes(int64_t header_json_bytes, const std::vector<int64_t>& section_bytes);

}  // namespace quantppl
