// libFuzzer target: the .qpack reader (parse_packed_model) on arbitrary bytes (scripts/fuzz.sh).
//
// Contract: it returns a PackedModel whose every section lies inside the bytes and whose layer
// list is non-empty with unique names, or throws quantppl::Error. Anything else (a crash, a
// sanitizer report, an exception of another type, an allocation beyond -rss_limit_mb) is a bug.
// The seed corpus (fuzz/corpus/qpack_fuzz/) holds real, small .qpack files to mutate. A mutation
// of the JSON header would almost always stop at the header's SHA-256, so the target writes the
// digest of whatever header the input has into the preamble first: the JSON and layout checks
// behind it get fuzzed too (the digest check itself is covered by PackedCorruptionTest).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

#include "quantppl/error.h"
#include "quantppl/packed_model.h"
#include "quantppl/sha256.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  if (bytes.size() >= static_cast<size_t>(quantppl::kQpackPreambleBytes)) {
    uint64_t header_len = 0;
    std::memcpy(&header_len, bytes.data() + 16, sizeof header_len);
    if (header_len <= bytes.size() - quantppl::kQpackPreambleBytes) {
      bytes.replace(24, 64, quantppl::sha256(std::string_view(bytes).substr(quantppl::kQpackPreambleBytes, header_len)));
    }
  }
  try {
    const quantppl::PackedModel m = quantppl::parse_packed_model(bytes, "fuzz.qpack");
    const auto inside = [&](int64_t offset, int64_t n) {
      return offset >= m.payload_offset && n >= 0 && offset <= static_cast<int64_t>(size) &&
             n <= static_cast<int64_t>(size) - offset;
    };
    std::set<std::string> names;
    if (m.layers.empty()) std::abort();
    for (size_t i = 0; i < m.layers.size(); ++i) {
      const quantppl::PackedLayer& l = m.layers[i];
      if (!names.insert(l.name).second) std::abort();
      for (const quantppl::PackedLayerSection& s : l.sections) {
        if (!inside(s.offset, s.bytes)) std::abort();
      }
      // What was accepted was unpacked: one weight of the layer's shape per layer.
      if (m.weights.size() <= i || m.weights[i].numel() != l.out_features * l.in_features) std::abort();
    }
    if (m.embedded && !inside(m.embedded_offset, m.embedded_bytes)) std::abort();
  } catch (const quantppl::Error&) {
  }
  return 0;
}
