// The zip integrity check (archive_integrity.h) against archives written by independent writers:
// PyTorch's (the tiny fixture), Python's zipfile (its member list, the reference for what a
// well-formed archive holds) and a minimal zip writer here, written from APPNOTE.TXT, for the
// malformed cases no real writer produces.
#include "quantppl/archive_integrity.h"

#include <zlib.h>

#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "fixture_support.h"
#include "quantppl/contract_model.h"
#include "quantppl/error.h"
#include "quantppl/sha256.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;
using testing::fixture;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void put16(std::string& out, uint32_t v) {
  out += static_cast<char>(v & 0xff);
  out += static_cast<char>((v >> 8) & 0xff);
}
void put32(std::string& out, uint32_t v) {
  put16(out, v & 0xffff);
  put16(out, v >> 16);
}

// One member for the writer below: `data` is what is stored (already deflated for method 8);
// the declared fields can be set to lie.
struct Entry {
  std::string name;
  std::string data;
  int method = 0;
  uint32_t crc = 0;
  uint32_t size = 0;  // uncompressed
  int flags = 0;
};

Entry stored(const std::string& name, const std::string& content) {
  Entry e{name, content};
  e.crc = static_cast<uint32_t>(::crc32(0, reinterpret_cast<const Bytef*>(content.data()), static_cast<uInt>(content.size())));
  e.size = static_cast<uint32_t>(content.size());
  return e;
}

// Raw deflate (zlib, independent of the inflate side under test).
Entry deflated(const std::string& name, const std::string& content) {
  z_stream z{};
  deflateInit2(&z, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&z, content.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(content.data()));
  z.avail_in = static_cast<uInt>(content.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  Entry e = stored(name, content);
  e.data = out;
  e.method = 8;
  return e;
}

// APPNOTE.TXT 4.3.7 (local header), 4.3.12 (central header), 4.3.16 (end record); no zip64.
std::string write_zip(const std::vector<Entry>& entries) {
  std::string out, central;
  for (const Entry& e : entries) {
    const uint32_t offset = static_cast<uint32_t>(out.size());
    put32(out, 0x04034b50);
    put16(out, 20);
    put16(out, e.flags);
    put16(out, e.method);
    put32(out, 0);
    put32(out, e.crc);
    put32(out, static_cast<uint32_t>(e.data.size()));
    put32(out, e.size);
    put16(out, static_cast<uint32_t>(e.name.size()));
    put16(out, 0);
    out += e.name + e.data;
    put32(central, 0x02014b50);
    put16(central, 20);
    put16(central, 20);
    put16(central, e.flags);
    put16(central, e.method);
    put32(central, 0);
    put32(central, e.crc);
    put32(central, static_cast<uint32_t>(e.data.size()));
    put32(central, e.size);
    put16(central, static_cast<uint32_t>(e.name.size()));
    put32(central, 0);  // extra and comment lengths
    put32(central, 0);  // disk, internal attributes
    put32(central, 0);  // external attributes
    put32(central, offset);
    central += e.name;
  }
  const uint32_t cd_offset = static_cast<uint32_t>(out.size());
  out += central;
  put32(out, 0x06054b50);
  put32(out, 0);
  put16(out, static_cast<uint32_t>(entries.size()));
  put16(out, static_cast<uint32_t>(entries.size()));
  put32(out, static_cast<uint32_t>(central.size()));
  put32(out, cd_offset);
  put16(out, 0);
  return out;
}

std::string error_of(const std::string& bytes) {
  try {
    verify_archive_bytes(bytes, "model 'm.pt'");
  } catch (const DataError& e) {
    const std::string what = e.what();
    EXPECT_THAT(what, HasSubstr("model 'm.pt'"));
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    return what;
  }
  ADD_FAILURE() << "no DataError";
  return "";
}

TEST(Crc32Test, KnownVectors) {
  // The CRC-32/ISO-HDLC check value (reveng catalogue) and two more from RFC 1952's algorithm.
  EXPECT_EQ(crc32("123456789"), 0xcbf43926u);
  EXPECT_EQ(crc32(""), 0u);
  EXPECT_EQ(crc32("a"), 0xe8b7be43u);
  EXPECT_EQ(crc32("The quick brown fox jumps over the lazy dog"), 0x414fa339u);
  EXPECT_EQ(crc32("56789", crc32("1234")), 0xcbf43926u);
}

// The PCLMULQDQ folding path against zlib's table-driven crc32 (an independent implementation):
// every length 0-300 (the folding/tail split), at every alignment 0-15, and split at random points.
TEST(Crc32Test, MatchesZlibAtEveryLengthAlignmentAndSplit) {
  std::string data(1 << 20, '\0');
  uint32_t state = 12345;
  for (char& c : data) {
    state = state * 1103515245u + 12345u;
    c = static_cast<char>(state >> 23);
  }
  const auto zlib = [](std::string_view s) {
    return static_cast<uint32_t>(::crc32(0, reinterpret_cast<const Bytef*>(s.data()), static_cast<uInt>(s.size())));
  };
  for (size_t offset = 0; offset < 16; ++offset) {
    for (size_t n = 0; n <= 300; ++n) {
      const std::string_view s(data.data() + offset, n);
      ASSERT_EQ(crc32(s), zlib(s)) << "offset " << offset << " length " << n;
    }
  }
  const std::string_view all(data);
  EXPECT_EQ(crc32(all), zlib(all));
  for (const size_t split : {size_t{1}, size_t{63}, size_t{64}, size_t{65}, size_t{1000}, size_t{777777}}) {
    EXPECT_EQ(crc32(all.substr(split), crc32(all.substr(0, split))), zlib(all)) << split;
  }
}

TEST(ArchiveIntegrityTest, AcceptsPyTorchsArchiveWithEveryMemberPythonSees) {
  const std::string path = fixture("tiny.pt");
  const RegularFile file(path, "model", kMaxModelFileBytes);
  const VerifiedArchive a = verify_archive(file);
  EXPECT_EQ(a.sha256, sha256(read_file(path)));
  EXPECT_EQ(a.file_bytes, file.size());
  // Python's zipfile as the reference for the member list, sizes and CRCs.
  const std::string listing = testing::run_command(
      testing::python() + " -c " +
      testing::shell_quote("import sys, zipfile\nfor i in zipfile.ZipFile(sys.argv[1]).infolist(): "
                           "print(i.filename, i.file_size, i.CRC, i.header_offset, i.compress_type)") +
      " " + testing::shell_quote(path));
  std::istringstream lines(listing);
  std::string name;
  int64_t size = 0, crc = 0, offset = 0;
  int method = 0;
  size_t count = 0, deflated_count = 0;
  while (lines >> name >> size >> crc >> offset >> method) {
    const ArchiveMember* m = a.find(name);
    ASSERT_NE(m, nullptr) << name;
    EXPECT_EQ(m->bytes, size) << name;
    EXPECT_EQ(m->crc32, static_cast<uint32_t>(crc)) << name;
    EXPECT_EQ(m->header_offset, offset) << name;
    EXPECT_EQ(m->method, method) << name;  // PyTorch stores tensors, deflates code
    deflated_count += method == 8;
    ++count;
  }
  EXPECT_GT(count, 10u);
  EXPECT_EQ(a.members.size(), count);
  EXPECT_GT(deflated_count, 0u);  // the inflating path ran on real data
}

TEST(ArchiveIntegrityTest, AFlippedByteInAnyMemberIsACrcMismatchNamingIt) {
  const std::string bytes = read_file(fixture("tiny.pt"));
  const VerifiedArchive a = verify_archive_bytes(bytes, "model 'm.pt'");
  int checked = 0;
  for (const ArchiveMember& m : a.members) {
    if (m.compressed_bytes == 0) continue;
    // Not the last byte of a deflated member: its high bits can be padding after the stream's
    // end, which changes nothing that is read (the inflated bytes and their CRC-32 stay the same).
    std::vector<int64_t> offsets = {0, m.compressed_bytes / 2};
    if (m.method == 0) offsets.push_back(m.compressed_bytes - 1);
    for (const int64_t at : offsets) {
      std::string corrupt = bytes;
      corrupt[static_cast<size_t>(m.data_offset + at)] ^= 0x10;
      const std::string e = error_of(corrupt);
      // A deflated member may already fail to inflate; a stored one only has its CRC to tell.
      EXPECT_THAT(e, HasSubstr(m.method == 0 ? "member '" + m.name + "': CRC-32 mismatch" : "member '" + m.name + "'"));
      ++checked;
    }
  }
  EXPECT_GT(checked, 30);
}

TEST(ArchiveIntegrityTest, EveryTruncationIsADataError) {
  const std::string bytes = read_file(fixture("tiny.pt"));
  for (size_t keep = 0; keep < bytes.size(); keep += bytes.size() / 97 + 1) {
    EXPECT_THROW(verify_archive_bytes(bytes.substr(0, keep), "m"), DataError) << keep;
  }
  for (size_t cut = 1; cut < 200; cut += 7) {
    EXPECT_THROW(verify_archive_bytes(bytes.substr(0, bytes.size() - cut), "m"), DataError) << cut;
  }
}

TEST(ArchiveIntegrityTest, GarbageIsNotAnArchive) {
  EXPECT_THAT(error_of(""), HasSubstr("too short for a zip file"));
  EXPECT_THAT(error_of(std::string(5000, 'x')), HasSubstr("no zip end-of-central-directory record"));
  EXPECT_THAT(error_of(write_zip({})), HasSubstr("model 'm.pt' is not a TorchScript archive (the zip archive is empty)"));
}

TEST(ArchiveIntegrityTest, WellFormedStoredAndDeflatedMembersPass) {
  const std::string text(100000, 'q');
  const VerifiedArchive a =
      verify_archive_bytes(write_zip({stored("m/data/0", "abcdef"), deflated("m/extra/tokenizer.model", text)}), "m");
  ASSERT_EQ(a.members.size(), 2u);
  EXPECT_EQ(a.members[1].bytes, 100000);
  EXPECT_LT(a.members[1].compressed_bytes, 1000);
}

TEST(ArchiveIntegrityTest, ZipBombsAndLyingSizesAreRejected) {
  // A deflated member that declares more than the limit: rejected before inflating anything.
  Entry bomb = deflated("m/data/0", std::string(1000, '\0'));
  bomb.size = static_cast<uint32_t>(kMaxInflatedMemberBytes + 1);
  EXPECT_THAT(error_of(write_zip({bomb})), HasSubstr("limit for a compressed member"));
  // One that declares little but inflates to more: stopped at its declared size.
  Entry liar = deflated("m/data/0", std::string(1 << 20, '\0'));
  liar.size = 1000;
  EXPECT_THAT(error_of(write_zip({liar})), HasSubstr("inflates to more than its declared 1000 bytes"));
  // Several members each under the limit, together over the total.
  std::vector<Entry> many;
  for (int i = 0; i * kMaxInflatedMemberBytes <= kMaxInflatedTotalBytes; ++i) {
    Entry e = deflated("m/data/" + std::to_string(i), "x");
    e.size = static_cast<uint32_t>(kMaxInflatedMemberBytes);
    many.push_back(e);
  }
  EXPECT_THAT(error_of(write_zip(many)), HasSubstr("compressed members expand to more than"));
  // A stored member whose declared size exceeds its data.
  Entry lie = stored("m/data/0", "abc");
  lie.size = 1u << 30;
  EXPECT_THAT(error_of(write_zip({lie})), HasSubstr("stored uncompressed but declares"));
  // Limits by name: quantppl.json and tokenizer.model.
  Entry meta = deflated("m/extra/quantppl.json", std::string(2 << 20, ' '));
  EXPECT_THAT(error_of(write_zip({meta})), HasSubstr("limit for quantppl.json"));
}

TEST(ArchiveIntegrityTest, CorruptDeflateDataIsRejected) {
  Entry e = deflated("m/data/0", std::string(5000, 'z'));
  e.data[e.data.size() / 2] ^= 0x55;
  const std::string err = error_of(write_zip({e}));
  EXPECT_THAT(err, HasSubstr("member 'm/data/0'"));
  Entry cut = deflated("m/data/0", std::string(5000, 'z'));
  cut.data.resize(cut.data.size() - 2);
  EXPECT_THAT(error_of(write_zip({cut})), HasSubstr("m/data/0"));
}

TEST(ArchiveIntegrityTest, StructuralLiesAreRejected) {
  Entry encrypted = stored("m/a", "x");
  encrypted.flags = 1;
  EXPECT_THAT(error_of(write_zip({encrypted})), HasSubstr("encrypted"));
  Entry bzip = stored("m/a", "x");
  bzip.method = 12;
  EXPECT_THAT(error_of(write_zip({bzip})), HasSubstr("compression method 12"));
  EXPECT_THAT(error_of(write_zip({stored("m/a", "x"), stored("m/a", "y")})), HasSubstr("appears twice"));

  // Two central entries pointing at the same local header: overlapping members.
  std::string zip = write_zip({stored("m/a", "xyz"), stored("m/b", "xyz")});
  const size_t second_central = zip.rfind(std::string("\x50\x4b\x01\x02", 4));
  const size_t offset_field = second_central + 42;
  zip.replace(offset_field, 4, std::string(4, '\0'));
  const std::string err = error_of(zip);
  EXPECT_TRUE(err.find("overlap") != std::string::npos || err.find("names another file") != std::string::npos) << err;

  // A central directory offset beyond the file.
  std::string far = write_zip({stored("m/a", "x")});
  far.replace(far.size() - 6, 4, std::string("\xff\xff\xff\x7f", 4));
  EXPECT_THAT(error_of(far), HasSubstr("central directory"));
}

// A storage record rewritten shorter with a valid CRC-32 (by Python's zipfile): the zip is sound,
// so only the load-time check of storages against the records LibTorch read can catch it.
TEST(ArchiveIntegrityTest, ShortStorageRecordWithAValidCrcFailsToLoad) {
  const std::string out = ::testing::TempDir() + "archive_integrity_short.pt";
  testing::run_command(testing::python() + " -c " +
                       testing::shell_quote("import sys, zipfile\n"
                                            "src, dst = sys.argv[1], sys.argv[2]\n"
                                            "z = zipfile.ZipFile(src)\n"
                                            "with zipfile.ZipFile(dst, 'w') as w:\n"
                                            "    for n in z.namelist():\n"
                                            "        b = z.read(n)\n"
                                            "        w.writestr(zipfile.ZipInfo(n), b[:len(b) // 2] if n.endswith('/data/0') else b)\n") +
                       " " + testing::shell_quote(fixture("tiny.pt")) + " " + testing::shell_quote(out));
  EXPECT_NO_THROW(verify_archive_bytes(read_file(out), "m"));  // a well-formed zip
  try {
    ContractModel::load(out);
    FAIL() << "no DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("but its storage record 'tiny/data/0' has only"));
  }
  std::remove(out.c_str());
}

}  // namespace
}  // namespace quantppl
