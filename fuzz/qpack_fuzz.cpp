// libFuzzer target: the .qpack reader (parse_packed_model) on arbitrary bytes (scripts/fuzz.sh).
//
// Contract: it returns a PackedModel whose every section lies inside the bytes and whose layer
// list is non-empty with unique names, or throws quantppl::Error. Anything else (a crash, a
// sanitizer report, an exception of another type, an allocation beyond -rss_limit_mb) is a bug.
// The seed corpus (fuzz/corpus/qpack_fuzz/) holds a real, small .qpack to mutate.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>

#include "quantppl/error.h"
#include "quantppl/packed_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const quantppl::PackedModel m =
        quantppl::parse_packed_model(std::string(reinterpret_cast<const char*>(data), size), "fuzz.qpack");
    const auto inside = [&](int64_t offset, int64_t bytes) {
      return offset >= m.payload_offset && bytes >= 0 && offset <= static_cast<int64_t>(size) &&
             bytes <= static_cast<int64_t>(size) - offset;
    };
    std::set<std::string> names;
    if (m.layers.empty()) std::abort();
    for (size_t i = 0; i < m.layers.size(); ++i) {
      const quantppl::PackedLayer& l = m.layers[i];
      if (!names.insert(l.name).second) std::abort();
      if (!inside(l.codes_offset, l.codes_bytes) || !inside(l.scales_offset, 4 * l.num_blocks)) std::abort();
      // Unpacking what was accepted must work and stay in range.
      const quantppl::QuantizedTensor q = m.quantized(i);
      if (q.codes.numel() != l.out_features * l.in_features) std::abort();
    }
    if (m.embedded && !inside(m.embedded_offset, m.source_bytes)) std::abort();
  } catch (const quantppl::Error&) {
  }
  return 0;
}
