#include "quantppl/methods/calibration_file.h"

#include <cstring>
#include <map>
#include <ostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "quantppl/error.h"
#include "quantppl/json_input.h"
#include "quantppl/output_file.h"
#include "quantppl/regular_file.h"
#include "quantppl/sha256.h"

namespace quantppl {
namespace {

constexpr const char* kFormatName = "quantppl-calibration";
constexpr int64_t kPrefixBytes = 16;   // magic + header length
constexpr int64_t kDigestBytes = 32;   // SHA-256 trailer
constexpr size_t kReadChunk = size_t{1} << 20;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the calibration file stores little-endian float32");

std::string hex_of(const unsigned char* digest) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 32; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

bool is_hex_digest(const std::string& s) {
  if (s.size() != 64) return false;
  for (const char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// Writes `bytes` to `out` and the digest.
void put(std::ostream& out, Sha256& digest, const void* data, size_t n) {
  const std::string_view bytes(static_cast<const char*>(data), n);
  digest.update(bytes);
  out.write(bytes.data(), static_cast<std::streamsize>(n));
}

void put_tensor(std::ostream& out, Sha256& digest, const torch::Tensor& t) {
  const torch::Tensor f = t.to(torch::kFloat32).contiguous();
  put(out, digest, f.data_ptr<float>(), static_cast<size_t>(f.numel()) * sizeof(float));
}

std::string shape(const torch::Tensor& t) { return t.defined() ? c10::str(t.sizes()) : std::string("undefined"); }

}  // namespace

void write_calibration_stats(const std::string& path, const CalibrationStats& stats, bool force,
                             const std::vector<std::string>& inputs) {
  // Groups: equal shared_input >= 0 -> one group (first layer's tensors); -1 -> its own.
  std::vector<const LayerActivationStats*> group_first;
  std::vector<int64_t> layer_group;
  std::map<int64_t, int64_t> group_of_id;
  for (const LayerActivationStats& layer : stats.layers) {
    const std::string what = "calibration stats for '" + path + "': layer '" + layer.name + "'";
    const int64_t in = layer.in_features;
    if (in < 1 || in > kMaxCalibrationInFeatures) {
      throw UsageError(fmt::format("{} has in_features {}, expected 1..{}", what, in, kMaxCalibrationInFeatures));
    }
    if (!layer.hessian.defined() || layer.hessian.sizes() != torch::IntArrayRef({in, in}) ||
        !layer.mean_abs.defined() || layer.mean_abs.sizes() != torch::IntArrayRef({in}) || !layer.max_abs.defined() ||
        layer.max_abs.sizes() != torch::IntArrayRef({in})) {
      throw UsageError(fmt::format("{}: hessian {}, mean_abs {}, max_abs {}; expected [{}, {}], [{}], [{}]", what,
                                   shape(layer.hessian), shape(layer.mean_abs), shape(layer.max_abs), in, in, in, in));
    }
    if (layer.tokens < 1) throw UsageError(fmt::format("{} has tokens {}, expected >= 1", what, layer.tokens));
    int64_t g = -1;
    if (layer.shared_input >= 0) {
      const auto it = group_of_id.find(layer.shared_input);
      if (it != group_of_id.end()) {
        g = it->second;
        const LayerActivationStats& first = *group_first[static_cast<size_t>(g)];
        if (first.in_features != in || first.tokens != layer.tokens) {
          throw UsageError(fmt::format("{} shares input {} with layer '{}' but has in_features {} / tokens {} against {} / {}",
                                       what, layer.shared_input, first.name, in, layer.tokens, first.in_features,
                                       first.tokens));
        }
      }
    }
    if (g < 0) {
      g = static_cast<int64_t>(group_first.size());
      group_first.push_back(&layer);
      if (layer.shared_input >= 0) group_of_id[layer.shared_input] = g;
    }
    layer_group.push_back(g);
  }

  nlohmann::ordered_json header;
  header["format"] = kFormatName;
  header["format_version"] = kCalibrationFormatVersion;
  header["model_sha256"] = stats.model_sha256;
  header["text"] = stats.text_path;
  header["text_sha256"] = stats.text_sha256;
  header["tokens"] = stats.tokens;
  header["groups"] = nlohmann::ordered_json::array();
  for (const LayerActivationStats* g : group_first) {
    header["groups"].push_back({{"in_features", g->in_features}, {"tokens", g->tokens}});
  }
  header["layers"] = nlohmann::ordered_json::array();
  for (size_t i = 0; i < stats.layers.size(); ++i) {
    header["layers"].push_back({{"name", stats.layers[i].name}, {"group", layer_group[i]}});
  }
  const std::string header_text = header.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
  if (static_cast<int64_t>(header_text.size()) > kMaxCalibrationHeaderBytes) {
    throw UsageError(fmt::format("calibration stats for '{}': header of {} bytes exceeds {}", path, header_text.size(),
                                 format_bytes(kMaxCalibrationHeaderBytes)));
  }

  write_stream_atomically(path, force, inputs, [&](std::ostream& out) {
    Sha256 digest;
    put(out, digest, kCalibrationMagic, sizeof(kCalibrationMagic));
    unsigned char length[8];
    uint64_t n = header_text.size();
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(n >> (8 * i));
    put(out, digest, length, 8);
    put(out, digest, header_text.data(), header_text.size());
    for (const LayerActivationStats* g : group_first) {
      put_tensor(out, digest, g->hessian);
      put_tensor(out, digest, g->mean_abs);
      put_tensor(out, digest, g->max_abs);
    }
    const std::string hex = digest.hex_digest();
    unsigned char raw[32];
    for (int i = 0; i < 32; ++i) raw[i] = static_cast<unsigned char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    out.write(reinterpret_cast<const char*>(raw), 32);
  });
}

CalibrationStats read_calibration_stats(const std::string& path) {
  const std::string name = "calibration stats '" + path + "'";
  const ActivityScope activity("reading " + name);
  const RegularFile file(path, "calibration stats", kMaxCalibrationFileBytes);
  const int64_t size = file.size();
  if (size < kPrefixBytes + 2 + kDigestBytes) {
    throw DataError(fmt::format("{} is {} bytes, too short for a calibration file (magic, header, SHA-256)", name, size));
  }
  Sha256 digest;
  char prefix[kPrefixBytes];
  file.read_at(0, prefix, kPrefixBytes);
  digest.update(std::string_view(prefix, kPrefixBytes));
  if (std::memcmp(prefix, kCalibrationMagic, sizeof(kCalibrationMagic)) != 0) {
    throw DataError(name + " does not start with \"QPPLCAL1\": not a quantppl calibration file (write one with "
                           "`quantppl calibrate --output`)");
  }
  uint64_t header_bytes = 0;
  for (int i = 0; i < 8; ++i) header_bytes |= static_cast<uint64_t>(static_cast<unsigned char>(prefix[8 + i])) << (8 * i);
  if (header_bytes < 2 || header_bytes > static_cast<uint64_t>(kMaxCalibrationHeaderBytes) ||
      static_cast<int64_t>(header_bytes) > size - kPrefixBytes - kDigestBytes) {
    throw DataError(fmt::format("{}: field 'header length' is {}, expected 2..{} and within the file's {} bytes", name,
                                header_bytes, kMaxCalibrationHeaderBytes, size));
  }
  std::string header_text(header_bytes, '\0');
  file.read_at(kPrefixBytes, header_text.data(), header_text.size());
  digest.update(header_text);

  const JsonReader r(name + ": header");
  const nlohmann::json header = parse_json(header_text, r.source());
  r.require_object(header, "");
  if (r.string(header, "format") != kFormatName) r.fail("format", std::string("expected \"") + kFormatName + "\"");
  const int64_t version = r.integer(header, "format_version");
  if (version != kCalibrationFormatVersion) {
    r.fail("format_version", fmt::format("version {} is not supported (this quantppl reads {})", version,
                                         kCalibrationFormatVersion));
  }
  CalibrationStats stats;
  stats.model_sha256 = r.string(header, "model_sha256");
  if (!is_hex_digest(stats.model_sha256)) r.fail("model_sha256", "expected 64 lowercase hex digits");
  stats.text_path = r.string(header, "text");
  stats.text_sha256 = r.string(header, "text_sha256");
  if (!is_hex_digest(stats.text_sha256)) r.fail("text_sha256", "expected 64 lowercase hex digits");
  stats.tokens = r.integer(header, "tokens", "", 1, int64_t{1} << 53);

  struct Group {
    int64_t in = 0;
    int64_t tokens = 0;
  };
  std::vector<Group> groups;
  const nlohmann::json& group_list = r.array(header, "groups");
  int64_t data_bytes = 0;
  for (size_t g = 0; g < group_list.size(); ++g) {
    const std::string field = "groups[" + std::to_string(g) + "]";
    r.require_object(group_list[g], field);
    Group group;
    group.in = r.integer(group_list[g], "in_features", field, 1, kMaxCalibrationInFeatures);
    group.tokens = r.integer(group_list[g], "tokens", field, 1, int64_t{1} << 53);
    // (in^2 + 2 in) * 4 <= 2^34: no overflow, and the running sum is capped by the file size.
    data_bytes += (group.in * group.in + 2 * group.in) * static_cast<int64_t>(sizeof(float));
    if (data_bytes > size) {
      r.fail(field + ".in_features", fmt::format("the groups up to this one need {} bytes of data, more than the "
                                                 "file's {} bytes",
                                                 data_bytes, size));
    }
    groups.push_back(group);
  }
  const nlohmann::json& layer_list = r.array(header, "layers");
  if (layer_list.empty()) r.fail("layers", "expected at least one layer");
  std::vector<std::pair<std::string, int64_t>> layer_entries;
  std::map<std::string, size_t> names;
  for (size_t i = 0; i < layer_list.size(); ++i) {
    const std::string field = "layers[" + std::to_string(i) + "]";
    r.require_object(layer_list[i], field);
    std::string layer_name = r.string(layer_list[i], "name", field);
    if (layer_name.empty()) r.fail(field + ".name", "expected a layer name, got \"\"");
    if (!names.emplace(layer_name, i).second) {
      r.fail(field + ".name", fmt::format("layer '{}' is listed twice (also layers[{}])", layer_name, names[layer_name]));
    }
    const int64_t g = r.integer(layer_list[i], "group", field, 0, static_cast<int64_t>(groups.size()) - 1);
    layer_entries.emplace_back(std::move(layer_name), g);
  }
  const int64_t expected = kPrefixBytes + static_cast<int64_t>(header_bytes) + data_bytes + kDigestBytes;
  if (expected != size) {
    throw DataError(fmt::format("{} is {} bytes, but its header describes {} (16 + header {} + data {} + SHA-256 32): "
                                "truncated or corrupt",
                                name, size, expected, header_bytes, data_bytes));
  }

  // The data, hashed as it is read; nothing is trusted before the digest matches.
  std::vector<LayerActivationStats> group_stats(groups.size());
  int64_t offset = kPrefixBytes + static_cast<int64_t>(header_bytes);
  auto read_tensor = [&](std::vector<int64_t> sizes) {
    torch::Tensor t = torch::empty(sizes, torch::kFloat32);
    char* data = static_cast<char*>(t.data_ptr());
    const size_t total = static_cast<size_t>(t.numel()) * sizeof(float);
    for (size_t done = 0; done < total;) {
      const size_t n = std::min(kReadChunk, total - done);
      file.read_at(offset, data + done, n);
      digest.update(std::string_view(data + done, n));
      done += n;
      offset += static_cast<int64_t>(n);
    }
    return t;
  };
  for (size_t g = 0; g < groups.size(); ++g) {
    LayerActivationStats& s = group_stats[g];
    s.in_features = groups[g].in;
    s.tokens = groups[g].tokens;
    s.shared_input = static_cast<int64_t>(g);
    s.hessian = read_tensor({groups[g].in, groups[g].in});
    s.mean_abs = read_tensor({groups[g].in});
    s.max_abs = read_tensor({groups[g].in});
  }
  unsigned char stored[kDigestBytes];
  file.read_at(offset, stored, kDigestBytes);
  const std::string actual = digest.hex_digest();
  if (hex_of(stored) != actual) {
    throw DataError(fmt::format("{}: field 'sha256' (the last 32 bytes) is {}, but the file's content hashes to {}: "
                                "the file is corrupt",
                                name, hex_of(stored), actual));
  }

  for (size_t g = 0; g < groups.size(); ++g) {
    const LayerActivationStats& s = group_stats[g];
    const std::string field = "groups[" + std::to_string(g) + "]";
    auto bad = [&](const std::string& what) { throw DataError(name + ": " + field + " " + what); };
    if (!torch::isfinite(s.hessian).all().item<bool>()) bad("hessian holds NaN or Inf");
    if (!torch::equal(s.hessian, s.hessian.t())) bad("hessian is not symmetric");
    if ((s.hessian.diagonal() < 0).any().item<bool>()) bad("hessian has a negative diagonal entry");
    if (!torch::isfinite(s.mean_abs).all().item<bool>() || (s.mean_abs < 0).any().item<bool>()) {
      bad("mean_abs holds a negative, NaN or Inf value");
    }
    if (!torch::isfinite(s.max_abs).all().item<bool>() || (s.max_abs < 0).any().item<bool>()) {
      bad("max_abs holds a negative, NaN or Inf value");
    }
  }
  for (auto& [layer_name, g] : layer_entries) {
    LayerActivationStats s = group_stats[static_cast<size_t>(g)];
    s.name = std::move(layer_name);
    stats.layers.push_back(std::move(s));
  }
  return stats;
}

}  // namespace quantppl
