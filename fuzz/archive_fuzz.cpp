// libFuzzer target: the TorchScript archive integrity check (verify_archive_bytes) on arbitrary
// bytes (scripts/fuzz.sh).
//
// Contract: it accepts an archive only if every member's data lies inside the bytes, members do
// not overlap, and every stored member's CRC-32 (recomputed here with zlib directly) matches; or it
// throws quantppl::DataError. A crash, a sanitizer report, another exception type or a hang (a
// declared size driving a loop) is a bug. The seed corpus holds small zip files, stored and
// deflated, zip64 end records included (the layout PyTorch writes).
#include <zlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "quantppl/archive_integrity.h"
#include "quantppl/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const quantppl::VerifiedArchive a = quantppl::verify_archive_bytes(bytes, "model 'fuzz.pt'");
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (const quantppl::ArchiveMember& m : a.members) {
      if (m.data_offset < 0 || m.compressed_bytes < 0 || m.data_offset > static_cast<int64_t>(size) ||
          m.compressed_bytes > static_cast<int64_t>(size) - m.data_offset) {
        std::abort();
      }
      if (m.method == 0) {
        const uLong crc = ::crc32(::crc32(0, nullptr, 0), data + m.data_offset, static_cast<uInt>(m.compressed_bytes));
        if (crc != m.crc32 || m.bytes != m.compressed_bytes) std::abort();
      } else if (m.bytes > quantppl::kMaxInflatedMemberBytes) {
        std::abort();
      }
      ranges.emplace_back(m.header_offset, m.data_offset + m.compressed_bytes);
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) {
      if (ranges[i].first < ranges[i - 1].second) std::abort();
    }
  } catch (const quantppl::DataError&) {
  }
  return 0;
}
