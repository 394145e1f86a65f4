// Real low-bit storage: the `.qpack` file format (docs/qpack-format.md).
//
// A .qpack holds a quantized variant of a contract model at its real width:
// every selected Linear weight as b-bit integer codes plus its per-block
// scales (and zero points), with the original contract model embedded (or
// referenced by path + SHA-256) for everything that is not quantized.
//
// ---------------------------------------------------------------------------
// Layout (all integers little-endian; offsets in bytes)
// ---------------------------------------------------------------------------
//   0   8   magic "QPPLPACK"
//   8   4   u32 format version (1)
//   12  4   u32 reserved, 0
//   16  8   u64 H, the length of the JSON header
//   24  64  SHA-256 of the JSON header, 64 lowercase ASCII hex digits
//   88  H   the JSON header (UTF-8), see below
//       ..  zero bytes up to P = align64(88 + H): the payload start
//   P   ..  the payload: sections, each starting at a multiple of 64 from P
//           (so at a multiple of 64 in the file), zero bytes between them,
//           none after the last. File size = P + payload_bytes.
//
// The JSON header: {format, format_version, variant (canonical spec), scheme,
// bits, granularity ("tensor"|"channel"|"group"), group_size, range
// ("minmax"|"percentile"|"mse"), percentile, scale_form ("step"|
// "inverse_step"), zero_point_codes ("unsigned"|"signed"), qmin, qmax,
// include, exclude, source_model: {path, sha256, bytes, embedded, section?},
// layers: [{name, shape: [out, in], numel, num_blocks, codes: {offset, bytes,
// bits}, scales: {offset, bytes, dtype: "f32"}, zero_points: null | {offset,
// bytes, dtype: "i16"|"f32"}}], payload_bytes, payload_sha256}. Section
// offsets are relative to P. The names are those of quantize.h's tables;
// the spec's ARITH is stored as scale_form + zero_point_codes (numpy: step +
// unsigned, tutorial: inverse_step + signed, whose scales hold k = 1/s).
//
// Codes: a layer's codes are ONE bit stream in row-major order, without row
// padding: code i occupies stream bits [i*b, i*b + b), stream bit k is bit
// (k mod 8) of byte k / 8 (LSB first), so at 4 bits code 0 is the low nibble
// of byte 0. Codes are stored as unsigned offsets u = q - qmin (absmax 4-bit
// [-7, 7] becomes [0, 14]); the last byte's unused high bits are zero.
// No row padding because the formula stays one line and flan-t5's rows (512,
// 1024, 384 inputs) are whole bytes at every width anyway.
// Scales: float32, one per block, in QParams order (quantize.h). Zero points
// (zeropoint scheme only; absmax has z = 0 and stores none): int16 when every
// one of the layer's zero points fits, else float32 (exact: they are
// integer-valued floats; only blocks far from 0 relative to their width need
// that, e.g. a group whose values all lie in [100, 100.01]).
//
// Size of the quantized layers (what `compare` reports as packed_bytes):
//   packed_bytes = sum over layers of  ceil(numel * b / 8)        codes
//                                    + 4 * num_blocks             scales
//                                    + 2 * num_blocks             zero points (zeropoint only; 4 * if float32)
// against fp32_bytes = 4 * sum numel. Section alignment, the header and the
// embedded model are not counted there; the file adds them (qpack_file_bytes).
//
// Why this design: the fixed preamble and 64-byte-aligned sections let a
// reader mmap the file and point SIMD loads straight at codes and scales; the
// JSON header is readable with `head -c` and any JSON tool; no protobuf, zip
// or flatbuffers dependency. Every byte is checked on read: the header by its
// SHA-256 in the preamble, the sections by payload_sha256, the padding must be
// zero, and every offset + size must lie within the file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "quantppl/contract_model.h"
#include "quantppl/quantize.h"
#include "quantppl/variant_spec.h"

namespace quantppl {

inline constexpr char kQpackMagic[8] = {'Q', 'P', 'P', 'L', 'P', 'A', 'C', 'K'};
constexpr uint32_t kQpackFormatVersion = 1;
constexpr int64_t kQpackAlignment = 64;
constexpr int64_t kQpackPreambleBytes = 88;  // magic, version, reserved, H, header SHA-256 (hex)
// Largest JSON header read (flan-t5-small's 190 layers take ~60 KB).
constexpr int64_t kMaxQpackHeaderBytes = int64_t{16} << 20;

// Packs unsigned codes (each in [0, 2^bits - 1]) into ceil(n * bits / 8)
// bytes in the bit order above. UsageError for bits outside [1, 8] or a
// code that does not fit.
std::string pack_codes(const int32_t* codes, int64_t count, int bits);
std::string pack_codes(const std::vector<int32_t>& codes, int bits);
// The inverse; `bytes` must hold exactly ceil(count * bits / 8) bytes.
std::vector<int32_t> unpack_codes(std::string_view bytes, int64_t count, int bits);

// One stored layer: where its sections are in PackedModel::bytes.
struct PackedLayer {
  std::string name;
  int64_t out_features = 0;
  int64_t in_features = 0;
  int64_t num_blocks = 0;
  int64_t codes_offset = 0;  // absolute file offsets
  int64_t codes_bytes = 0;
  int64_t scales_offset = 0;
  int64_t zero_points_offset = -1;  // -1: none (absmax)
  bool zero_points_f32 = false;     // false: int16
};

struct PackedModel {
  std::string path;
  Variant variant;  // name = canonical spec
  std::string include;
  std::string exclude;
  std::string source_path;    // as given when packing
  std::string source_sha256;  // of the contract model's bytes
  int64_t source_bytes = 0;
  bool embedded = false;
  int64_t embedded_offset = -1;  // absolute file offset of the embedded .pt, if embedded
  std::vector<PackedLayer> layers;
  int64_t header_bytes = 0;   // H
  int64_t payload_offset = 0; // P
  int64_t payload_bytes = 0;
  std::string bytes;  // the whole file
  std::string file_sha256;  // of `bytes`

  // The layer's codes (int32 [out, in], in [qmin, qmax]) and parameters
  // ([num_blocks, 1] float32), ready for dequantize().
  QuantizedTensor quantized(size_t layer) const;
  // The embedded contract model's bytes (empty if referenced).
  std::string_view embedded_model() const;
};

struct PackedModelSummary {
  int64_t layers = 0;
  int64_t parameters = 0;
  int64_t packed_bytes = 0;  // the formula above
  int64_t fp32_bytes = 0;
  int64_t file_bytes = 0;
};

// Quantizes the selected Linear layers (include/exclude as select_layers) of
// the contract model at `model_path` with `variant` and writes `out_path`
// atomically (temporary file + rename; an existing file only with `force`).
// `embed`: store the whole model file in the .qpack; otherwise reference it
// by the path as given plus its SHA-256. UsageError for fp32 or a .qpack
// input (re-packing would lose which layers the input had quantized).
PackedModelSummary write_packed_model(const std::string& model_path, const Variant& variant,
                                      const std::string& include, const std::string& exclude,
                                      const std::string& out_path, bool force, bool embed);

// Reads and validates every byte (see above): DataError naming the file and
// the field for bad magic, an unknown version, a truncated file, a header
// that does not parse or is inconsistent (shape, numel, num_blocks, bytes vs
// bits and granularity, offsets out of the file or overlapping), a checksum
// mismatch, a code outside [qmin, qmax], an empty layer list or a layer named
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

// packed_bytes of the formula above for these layers under `config`, assuming
// int16 zero points. With the chosen parameters (one QParams per layer) it is
// exact: layers whose zero points do not fit int16 count 4 bytes a block.
int64_t packed_size_bytes(const std::vector<LinearLayer>& layers, const QuantConfig& config);
int64_t packed_size_bytes(const std::vector<LinearLayer>& layers, const QuantConfig& config,
                          const std::vector<QParams>& params);

// The file size for a JSON header of `header_json_bytes` and these sections
// in order: align64(88 + H) + the sections, each but the last padded to 64.
int64_t qpack_file_bytes(int64_t header_json_bytes, const std::vector<int64_t>& section_bytes);

}  // namespace quantppl
