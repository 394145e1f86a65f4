// The calibration statistics file written by `quantppl calibrate --output F`
// and read by `--calibration-stats F` (docs/calibration.md has the layout).
//
//   offset 0        8 bytes   magic "QPPLCAL1"
//   offset 8        8 bytes   H = header length, unsigned little-endian, 2 <= H <= 16 MiB
//   offset 16       H bytes   header: one UTF-8 JSON object (below)
//   offset 16+H     D bytes   data: for each group in header order, float32 little-endian,
//                             hessian (in x in, row-major), then mean_abs (in), then max_abs (in)
//   offset 16+H+D   32 bytes  SHA-256 of every byte before it (raw digest)
//
// Header: {"format": "quantppl-calibration", "format_version": 1,
//          "model_sha256": hex, "text": path, "text_sha256": hex, "tokens": N,
//          "groups": [{"in_features": in, "tokens": N_g}, ...],
//          "layers": [{"name": "encoder.block.0.layer.0.SelfAttention.q", "group": g}, ...]}
// A group is one input tensor (calibration_stats.h's shared_input): q, k and v
// of an attention point at one group, whose H is stored once.
//
// Reading a hostile file (docs/reliability.md): a regular file of at most
// kMaxCalibrationFileBytes; the header is bounded and parsed by json_input.h;
// D is computed from the header with overflow checks and must make the file
// size exactly 16 + H + D + 32 BEFORE any tensor is allocated (so allocation
// never exceeds the file size); the SHA-256 is checked over the whole file;
// then every statistic must be finite, H symmetric with a nonnegative
// diagonal, mean_abs and max_abs nonnegative. Every failure is a DataError
// naming the file and the field ("calibration stats 'c.qcal': header:
// field 'groups[2].in_features' ..."); a missing or non-regular file is an IoError.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quantppl/methods/calibration_stats.h"

namespace quantppl {

inline constexpr char kCalibrationMagic[8] = {'Q', 'P', 'P', 'L', 'C', 'A', 'L', '1'};
constexpr int64_t kCalibrationFormatVersion = 1;
constexpr int64_t kMaxCalibrationHeaderBytes = int64_t{16} << 20;
// 64 GiB, as kMaxModelFileBytes: a 7B model's Hessians in float32 are ~21 GB.
constexpr int64_t kMaxCalibrationFileBytes = int64_t{64} << 30;
// Largest in_features a file may declare (one H of 65536^2 floats is 16 GiB).
constexpr int64_t kMaxCalibrationInFeatures = int64_t{1} << 16;

// Writes `stats` to `path` atomically (output_file.h: replaces an existing
// regular file only with `force`, never one of `inputs`). Layers with the same
// shared_input >= 0 are stored as one group (their in_features, tokens and
// tensors must agree: the first layer's tensors are written); a layer with
// shared_input -1 is a group of its own. Tensors are written as float32.
// UsageError for statistics that are malformed (a missing tensor, a wrong
// shape, disagreeing shared layers); IoError if writing fails.
void write_calibration_stats(const std::string& path, const CalibrationStats& stats, bool force,
                             const std::vector<std::string>& inputs = {});

// The statistics in `path` (float32 tensors; layers of a group alias one set of
// tensors and share shared_input = the group index). Errors as above.
CalibrationStats read_calibration_stats(const std::string& path);

}  // namespace quantppl
