// libFuzzer target: the variant-spec parser on arbitrary bytes (scripts/fuzz.sh).
//
// Contract: parse_variant and parse_variant_list either return a variant whose
// config passes validate(), or throw quantppl::Error (UsageError). Any other
// exception, a crash or a sanitizer report is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "quantppl/error.h"
#include "quantppl/variant_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string spec(reinterpret_cast<const char*>(data), size);
  try {
    const quantppl::Variant v = quantppl::parse_variant(spec);
    if (!v.is_fp32) {
      quantppl::validate(v.config);  // what parses must be a usable config
      // The canonical spelling must parse back to the same config.
      const quantppl::Variant again = quantppl::parse_variant(quantppl::canonical_spec(v));
      if (again.config.bits != v.config.bits || again.config.scheme != v.config.scheme ||
          again.config.granularity != v.config.granularity || again.config.group_size != v.config.group_size ||
          again.config.range != v.config.range) {
        std::abort();
      }
    }
  } catch (const quantppl::Error&) {
  }
  try {
    (void)quantppl::parse_variant_list(spec);
  } catch (const quantppl::Error&) {
  }
  return 0;
}
