// Integrity of a TorchScript archive before LibTorch is allowed to read it.
//
// A TorchScript model is a zip file (APPNOTE.TXT, with the zip64 end records PyTorch always
// writes). LibTorch's reader (miniz, built without its CRC checks) trusts the archive: a flipped
// byte in a weight's storage record loads silently and gives a wrong perplexity; a member whose
// declared size exceeds its data is read past its end; a deflated member expands to whatever it
// declares. verify_archive() checks the structure itself, trusting no declared size:
//
//   - the end-of-central-directory record (and its zip64 locator and record, if present) lies
//     exactly at the end of the file, the central directory inside the file before it, with as
//     many entries as declared;
//   - every member: its local header inside the file and agreeing with its central entry (name,
//     method, flags), not encrypted, stored (method 0, compressed size == size) or deflated
//     (method 8), its data [offset, offset + compressed size) inside the file before the central
//     directory, no two members overlapping (overlapping members are the classic zip bomb) and
//     no name twice;
//   - limits: a deflated member expands to at most kMaxInflatedMemberBytes, all deflated members
//     together to at most kMaxInflatedTotalBytes (PyTorch stores members uncompressed; a deflated
//     one comes from re-zipping, so this costs real models nothing), extra/quantppl.json is at
//     most kMaxMetadataBytes and extra/tokenizer.model and extra/tokenizer.json at most kMaxTokenizerMemberBytes;
//   - the CRC-32 of every member's data (of the inflated bytes, for a deflated member, which must
//     inflate to exactly its declared size), in one sequential pass over the file that also
//     computes the file's SHA-256 (reported as model_sha256): verifying costs one read of the file.
//
// Each failure is a DataError naming the file and the member ("model 'm.pt': member
// 'm/data/3': CRC-32 mismatch (stored 0x1a2b3c4d, computed 0x...): the file is corrupt").
//
// What the zip structure cannot tell: whether a storage record is large enough for the tensors
// that view it. ContractModel::load checks that after torch::jit::load, on the tensors themselves
// (contract_model.cpp), before any tensor data is read.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "quantppl/regular_file.h"

namespace quantppl {

constexpr int64_t kMaxInflatedMemberBytes = int64_t{64} << 20;   // 64 MiB
constexpr int64_t kMaxInflatedTotalBytes = int64_t{256} << 20;   // 256 MiB
constexpr int64_t kMaxTokenizerMemberBytes = int64_t{64} << 20;  // 64 MiB (T5's spiece.model: 0.8 MB)
constexpr int64_t kMaxArchiveMembers = int64_t{1} << 20;

struct ArchiveMember {
  std::string name;
  int64_t header_offset = 0;  // local file header
  int64_t data_offset = 0;
  int64_t compressed_bytes = 0;
  int64_t bytes = 0;  // uncompressed
  uint32_t crc32 = 0;
  int method = 0;  // 0 stored, 8 deflated
};

struct VerifiedArchive {
  std::vector<ArchiveMember> members;  // in central-directory order
  int64_t file_bytes = 0;
  std::string sha256;  // of the whole file, 64 lowercase hex digits

  // The member named exactly `name`, or nullptr.
  const ArchiveMember* find(std::string_view name) const;
};

// Verifies the archive in `file` as above. `source` prefixes messages ("model 'm.pt'").
VerifiedArchive verify_archive(const RegularFile& file);
// The same on bytes in memory (tests, fuzzing).
VerifiedArchive verify_archive_bytes(std::string_view bytes, const std::string& source);

// CRC-32 (ISO-HDLC, the zip/gzip/PNG one) of `bytes` continuing from `crc` (0 to start).
uint32_t crc32(std::string_view bytes, uint32_t crc = 0);

}  // namespace quantppl
