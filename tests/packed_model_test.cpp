// The .qpack format (packed_model.h): bit packing against a naive bit-by-bit
// reference, pack -> load bit-exactness against fake_quantize, the size
// formula, and rejection of corrupt, truncated and mismatched files.
#include "quantppl/packed_model.h"

#include <unistd.h>

#include <cstdio>
#include <functional>
#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "fixture_support.h"
#include "quantppl/compare.h"
#include "quantppl/error.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/sha256.h"
#include "quantppl/variant_spec.h"

namespace quantppl {
namespace {

namespace fs = std::filesystem;

// The reference: set stream bit i*b + j to bit j of code i, one bit at a time,
// with stream bit k = bit (k mod 8) of byte k / 8.
std::string naive_pack(const std::vector<int32_t>& codes, int bits) {
  std::string out((codes.size() * bits + 7) / 8, '\0');
  for (size_t i = 0; i < codes.size(); ++i) {
    for (int j = 0; j < bits; ++j) {
      if ((codes[i] >> j) & 1) {
        const size_t k = i * bits + j;
        out[k / 8] = static_cast<char>(static_cast<uint8_t>(out[k / 8]) | (1u << (k % 8)));
      }
    }
  }
  return out;
}

TEST(PackedCodesTest, RoundTripMatchesNaiveReferenceForEveryWidth) {
  std::mt19937 rng(1234);
  for (int bits = 1; bits <= 8; ++bits) {
    const int32_t max_code = (1 << bits) - 1;
    for (const int64_t count : {0, 1, 2, 3, 7, 8, 9, 31, 64, 1001}) {
      std::uniform_int_distribution<int32_t> dist(0, max_code);
      std::vector<int32_t> codes(static_cast<size_t>(count));
      for (auto& c : codes) c = dist(rng);
      // The edge values qmin (0 stored) and qmax - qmin (all ones) at both ends.
      if (count >= 1) codes.front() = max_code;
      if (count >= 2) codes.back() = max_code;
      if (count >= 3) codes[1] = 0;
      const std::string packed = pack_codes(codes, bits);
      EXPECT_EQ(packed, naive_pack(codes, bits)) << bits << " bits, " << count << " codes";
      EXPECT_EQ(static_cast<int64_t>(packed.size()), (count * bits + 7) / 8);
      EXPECT_EQ(unpack_codes(packed, count, bits), codes) << bits << " bits, " << count << " codes";
    }
  }
}

TEST(PackedCodesTest, FourBitsPutCodeZeroInTheLowNibble) {
  EXPECT_EQ(pack_codes(std::vector<int32_t>{0x3, 0xA, 0xF}, 4), std::string("\xA3\x0F", 2));
  EXPECT_EQ(pack_codes(std::vector<int32_t>{1, 2, 3, 0}, 2), std::string("\x39", 1));
}

TEST(PackedCodesTest, RejectsCodesThatDoNotFit) {
  EXPECT_THROW(pack_codes(std::vector<int32_t>{16}, 4), UsageError);
  EXPECT_THROW(pack_codes(std::vector<int32_t>{-1}, 4), UsageError);
  EXPECT_THROW(unpack_codes(std::string(4, '\0'), 5, 4), UsageError);
}


// ---- files on the tiny fixture ----

// One scratch directory per test process, removed when the process exits.
std::string temp_dir() {
  struct ScratchDir {
    std::string path;
    ScratchDir() : path((fs::temp_directory_path() / "quantppl-packed-test-XXXXXX").string()) {
      if (::mkdtemp(path.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    }
    ~ScratchDir() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  };
  static const ScratchDir dir;
  return dir.path;
}

std::string temp_path(const std::string& name) { return temp_dir() + "/" + name; }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The DataError message of reading `path`, or "" if it loads.
std::string load_error(const std::string& path) {
  try {
    load_packed_model(path);
  } catch (const DataError& e) {
    return e.what();
  }
  return "";
}

class PackedModelTest : public ::testing::TestWithParam<std::string> {};

// Pack, load, and compare every stored weight with fake_quantize of the
// original, bit for bit; untouched layers keep their original weights.
TEST_P(PackedModelTest, LoadReproducesFakeQuantizedWeightsBitForBit) {
  const Variant variant = parse_variant(GetParam());
  const std::string tiny = testing::fixture("tiny.pt");
  const std::string out = temp_path("roundtrip.qpack");
  const PackedModelSummary s =
      write_packed_model(tiny, variant, "", "", out, /*force=*/true, /*embed=*/true);
  ContractModel original = ContractModel::load(tiny);
  ContractModel loaded = load_model_file(out);
  const auto original_layers = original.linear_layers();
  const auto loaded_layers = loaded.linear_layers();
  ASSERT_EQ(original_layers.size(), loaded_layers.size());
  ASSERT_EQ(s.layers, static_cast<int64_t>(original_layers.size()));
  for (size_t i = 0; i < original_layers.size(); ++i) {
    const torch::Tensor expected = fake_quantize(original_layers[i].weight, variant.config, original_layers[i].name);
    EXPECT_TRUE(torch::equal(loaded_layers[i].weight, expected)) << GetParam() << " " << original_layers[i].name;
  }
  // The size formula, from the layers and from the written file.
  EXPECT_EQ(s.packed_bytes, packed_size_bytes(original_layers, variant.config));
  const PackedModel m = read_packed_model(out);
  EXPECT_EQ(m.version, 2u);
  std::vector<int64_t> sections;
  int64_t formula = 0;
  for (const PackedLayer& layer : m.layers) {
    const int64_t numel = layer.out_features * layer.in_features;
    const int64_t blocks = variant.config.granularity == Granularity::kPerTensor    ? 1
                           : variant.config.granularity == Granularity::kPerChannel ? layer.out_features
                                                                                    : numel / variant.config.group_size;
    const int64_t codes = (numel * variant.config.bits + 7) / 8;
    sections.push_back(codes);
    sections.push_back(4 * blocks);
    formula += codes + 4 * blocks;
    if (variant.config.scheme == Scheme::kZeroPoint) {
      sections.push_back(2 * blocks);
      formula += 2 * blocks;
    }
    int64_t stored = 0;
    for (const PackedLayerSection& section : layer.sections) stored += section.bytes;
    EXPECT_EQ(stored, codes + 4 * blocks + (variant.config.scheme == Scheme::kZeroPoint ? 2 * blocks : 0)) << layer.name;
  }
  EXPECT_EQ(formula, s.packed_bytes);
  EXPECT_DOUBLE_EQ(s.bits_per_weight, 8.0 * static_cast<double>(formula) / static_cast<double>(s.parameters));
  // The embedded model is the original without its quantized Linear weights: smaller by about
  // their float32 bytes (each stripped weight keeps 4 bytes at most).
  ASSERT_TRUE(m.embedded_stripped);
  EXPECT_LT(m.embedded_bytes, static_cast<int64_t>(fs::file_size(tiny)) - s.fp32_bytes + 4096);
  sections.push_back(m.embedded_bytes);
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(out)), qpack_file_bytes(m.header_bytes, sections));
  EXPECT_EQ(s.file_bytes, static_cast<int64_t>(fs::file_size(out)));
  EXPECT_LT(s.file_bytes, static_cast<int64_t>(fs::file_size(tiny)));
  EXPECT_EQ(m.variant.name, canonical_spec(variant));
}

INSTANTIATE_TEST_SUITE_P(Variants, PackedModelTest,
                         ::testing::Values("absmax:2", "absmax:3:channel", "absmax:4:group32", "absmax:8:channel",
                                           "zeropoint:2:group32", "zeropoint:3", "zeropoint:4:channel",
                                           "zeropoint:8:group32", "absmax:4:channel:p99.9", "zeropoint:4:group32:mse",
                                           "absmax:3:group32:mse", "zeropoint:8:tensor:p99",
                                           "absmax:8:tensor:minmax:tutorial", "zeropoint:8:tensor:minmax:tutorial",
                                           "absmax:4:channel:minmax:tutorial", "zeropoint:2:group32:mse:tutorial"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

TEST(PackedModelFileTest, FourBitCodesTakeHalfAByteEach) {
  const std::string out = temp_path("a4.qpack");
  const PackedModelSummary s =
      write_packed_model(testing::fixture("tiny.pt"), parse_variant("absmax:4:channel"), "", "", out, true, false);
  int64_t rows = 0;
  ContractModel model = ContractModel::load(testing::fixture("tiny.pt"));
  for (const auto& layer : model.linear_layers()) rows += layer.weight.size(0);
  EXPECT_EQ(s.packed_bytes, s.parameters / 2 + 4 * rows);
  EXPECT_EQ(s.fp32_bytes, 4 * s.parameters);
  // Stored codes are q - qmin = q + 7 in [0, 14]: never 15.
  const PackedModel m = read_packed_model(out);
  const QuantizedTensor q = m.quantized(0);
  EXPECT_GE(q.codes.min().item<int32_t>(), -7);
  EXPECT_LE(q.codes.max().item<int32_t>(), 7);
}

TEST(PackedModelFileTest, IncludeStoresOnlyTheSelectedLayers) {
  const std::string tiny = testing::fixture("tiny.pt");
  const std::string out = temp_path("include.qpack");
  const Variant v = parse_variant("zeropoint:3:channel");
  write_packed_model(tiny, v, "decoder", "DenseReluDense", out, true, true);
  ContractModel original = ContractModel::load(tiny);
  ContractModel loaded = load_packed_model(out);
  const auto a = original.linear_layers();
  const auto b = loaded.linear_layers();
  const auto selected = select_layers(a, "decoder", "DenseReluDense");
  EXPECT_EQ(read_packed_model(out).layers.size(), selected.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const bool is_selected = a[i].name.find("decoder") != std::string::npos &&
                             a[i].name.find("DenseReluDense") == std::string::npos;
    const torch::Tensor expected = is_selected ? fake_quantize(a[i].weight, v.config, a[i].name) : a[i].weight;
    EXPECT_TRUE(torch::equal(b[i].weight, expected)) << a[i].name;
  }
}

TEST(PackedModelFileTest, CompareOnPackedFileEqualsCompareWithTheVariant) {
  const std::string tiny = testing::fixture("tiny.pt");
  const std::string out = temp_path("compare.qpack");
  const PackedModelSummary summary =
      write_packed_model(tiny, parse_variant("zeropoint:4:group32"), "", "", out, true, true);
  CompareOptions o;
  o.model_path = out;
  o.variants = parse_variant_list("fp32");
  o.max_length = 32;
  const CompareReport on_packed = run_compare(o);
  o.model_path = tiny;
  o.variants = parse_variant_list("zeropoint:4:group32");
  const CompareReport on_original = run_compare(o);
  EXPECT_DOUBLE_EQ(on_packed.results[0].ppl, on_original.results[0].ppl);
  EXPECT_EQ(on_packed.results[0].nll, on_original.results[0].nll);
  // The report's sizes: fp32's packed size is its fp32 size; the variant's is the formula.
  EXPECT_EQ(on_packed.results[0].packed_bytes, on_packed.results[0].fp32_bytes);
  EXPECT_EQ(on_original.results[0].packed_bytes, summary.packed_bytes);
  EXPECT_EQ(on_original.results[0].fp32_bytes, summary.fp32_bytes);
}

TEST(PackedModelFileTest, ReferencedModelIsCheckedBySha256) {
  const std::string copy = temp_path("source-copy.pt");
  fs::copy_file(testing::fixture("tiny.pt"), copy, fs::copy_options::overwrite_existing);
  const std::string out = temp_path("referenced.qpack");
  write_packed_model(copy, parse_variant("absmax:8"), "", "", out, true, /*embed=*/false);
  EXPECT_FALSE(read_packed_model(out).embedded);
  EXPECT_LT(fs::file_size(out), fs::file_size(copy));
  EXPECT_NO_THROW(load_packed_model(out));
  // Change the referenced model: one byte near the end of the archive.
  std::string bytes = read_bytes(copy);
  bytes[bytes.size() - 10] ^= 0x01;
  write_bytes(copy, bytes);
  const std::string error = load_error(out);
  EXPECT_NE(error.find("sha256"), std::string::npos) << error;
  EXPECT_NE(error.find(out), std::string::npos) << error;
  fs::remove(copy);
  EXPECT_THROW(load_packed_model(out), IoError);
}

TEST(PackedModelFileTest, RejectsPackingFp32OrAPackedFile) {
  const std::string out = temp_path("a8.qpack");
  write_packed_model(testing::fixture("tiny.pt"), parse_variant("absmax:8"), "", "", out, true, true);
  EXPECT_THROW(write_packed_model(testing::fixture("tiny.pt"), parse_variant("fp32"), "", "", temp_path("x.qpack"), true, true),
               UsageError);
  EXPECT_THROW(write_packed_model(out, parse_variant("absmax:4"), "", "", temp_path("x.qpack"), true, true), UsageError);
  EXPECT_THROW(write_packed_model(testing::fixture("tiny.pt"), parse_variant("absmax:8"), "", "", out, false, true), IoError);
}

// ---- corruption ----

class PackedCorruptionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    good_path_ = temp_path("good.qpack");
    // Version 1 files stay readable: this suite checks the version 1 reader (QpackV2CorruptionTest the version 2 one).
    write_packed_model_v1(testing::fixture("tiny.pt"), parse_variant("zeropoint:4:group32"), "", "", good_path_, true, true);
    good_ = read_bytes(good_path_);
  }
  // Writes `bytes` and returns the DataError message of loading it.
  static std::string error_of(const std::string& bytes) {
    const std::string path = temp_path("bad.qpack");
    write_bytes(path, bytes);
    return load_error(path);
  }
  static std::string flipped(size_t at) {
    std::string b = good_;
    b[at] = static_cast<char>(b[at] ^ 0x20);
    return b;
  }
  static inline std::string good_path_;
  static inline std::string good_;
};

TEST_F(PackedCorruptionTest, TheGoodFileLoads) { EXPECT_EQ(load_error(good_path_), ""); }

TEST_F(PackedCorruptionTest, BadMagic) {
  const std::string e = error_of(flipped(3));
  EXPECT_NE(e.find("bad magic"), std::string::npos) << e;
  EXPECT_NE(e.find("bad.qpack"), std::string::npos) << e;
  // A flipped magic is no longer recognised as a .qpack by load_model_file:
  // it goes to the TorchScript loader, which rejects it too.
  EXPECT_THROW(load_model_file(temp_path("bad.qpack")), DataError);
}

TEST_F(PackedCorruptionTest, UnknownVersionAndReserved) {
  std::string b = good_;
  b[8] = 3;
  EXPECT_NE(error_of(b).find("format version 3 is not supported"), std::string::npos) << error_of(b);
  b = good_;
  b[13] = 1;
  EXPECT_NE(error_of(b).find("reserved"), std::string::npos) << error_of(b);
}

TEST_F(PackedCorruptionTest, HeaderBytesAreChecked) {
  // A byte inside the JSON header (a layer name), and the header length.
  const size_t name_at = good_.find("\"encoder.");
  ASSERT_NE(name_at, std::string::npos);
  EXPECT_NE(error_of(flipped(name_at + 3)).find("header SHA-256 mismatch"), std::string::npos);
  std::string b = good_;
  b[16] = static_cast<char>(b[16] + 1);
  EXPECT_NE(error_of(b), "");
  b = good_;
  b[23] = 0x7f;  // an absurd header length
  EXPECT_NE(error_of(b).find("truncated"), std::string::npos) << error_of(b);
}

TEST_F(PackedCorruptionTest, InconsistentHeaderFieldsAreNamed) {
  // Rewrite the header (with a matching digest) so that only the field check catches it.
  const PackedModel m = read_packed_model(good_path_);
  const std::string header_text = good_.substr(kQpackPreambleBytes, static_cast<size_t>(m.header_bytes));
  const auto rewrite = [&](const std::function<void(nlohmann::json&)>& change) {
    nlohmann::json h = nlohmann::json::parse(header_text);
    change(h);
    std::string text = h.dump(1) + "\n";
    // Keep the same length so the payload does not move: pad with spaces or fail the test.
    if (text.size() > header_text.size()) return std::string("header grew");
    text.insert(text.size() - 1, header_text.size() - text.size(), ' ');
    std::string b = good_;
    b.replace(kQpackPreambleBytes, header_text.size(), text);
    b.replace(24, 64, sha256(text));
    return error_of(b);
  };
  EXPECT_NE(rewrite([](auto& h) { h["layers"][0]["numel"] = 12; }).find("layers[0].numel"), std::string::npos);
  EXPECT_NE(rewrite([](auto& h) { h["layers"][1]["num_blocks"] = 3; }).find("layers[1].num_blocks"), std::string::npos);
  EXPECT_NE(rewrite([](auto& h) { h["layers"][2]["codes"]["bytes"] = 10; }).find("layers[2].codes.bytes"), std::string::npos);
  EXPECT_NE(rewrite([](auto& h) { h["layers"][0]["shape"][1] = 48; }).find("layers[0]"), std::string::npos);
  {
    const std::string e = rewrite([](auto& h) { h["bits"] = 3; });
    EXPECT_NE(e.find("header: field 'qmin'"), std::string::npos) << e;
  }
  EXPECT_NE(rewrite([](auto& h) { h["layers"][0]["scales"]["offset"] = 65; }).find("layers[0].scales.offset"),
            std::string::npos);
  EXPECT_NE(rewrite([](auto& h) { h["layers"][0]["name"] = "encoder.nope"; }).find("not a Linear layer"),
            std::string::npos);
  EXPECT_NE(rewrite([](auto& h) { h["payload_sha256"] = std::string(64, '0'); }).find("payload_sha256"),
            std::string::npos);
  EXPECT_NE(rewrite([](auto& h) { h.erase("scheme"); }).find("missing field 'scheme'"), std::string::npos);
  // Issue 20: a layer list that is empty or names a layer twice is corrupt, not an fp32 model; a
  // shape whose product overflows or cannot fit the payload; a header nested too deeply.
  {
    const std::string e = rewrite([](auto& h) { h["layers"] = nlohmann::json::array(); });
    EXPECT_NE(e.find("header: field 'layers' is empty"), std::string::npos) << e;
  }
  {
    const std::string e = rewrite([](auto& h) { h["layers"][1]["name"] = h["layers"][0]["name"]; });
    EXPECT_NE(e.find("field 'layers[1].name'"), std::string::npos) << e;
    EXPECT_NE(e.find("appears twice"), std::string::npos) << e;
  }
  for (const int64_t dim : {int64_t{1} << 31, int64_t{1} << 20}) {
    // "format" (not read) makes room for the longer numbers: the header must not grow.
    const std::string e = rewrite([dim](auto& h) {
      h["format"] = "";
      h["layers"][0]["shape"] = {dim, dim};
    });
    EXPECT_NE(e.find("field 'layers[0].shape'"), std::string::npos) << e;
    EXPECT_NE(e.find("more than the payload"), std::string::npos) << e;
  }
  {
    const std::string e = rewrite([](auto& h) {
      h["format"] = "";
      h["layers"][0]["shape"] = {int64_t{1} << 40, 1};
    });
    EXPECT_NE(e.find("field 'layers[0].shape[0]' must be in [1, 2147483648]"), std::string::npos) << e;
  }
  {
    const std::string e = rewrite([](auto& h) {
      nlohmann::json deep = 1;
      for (int i = 0; i < 100; ++i) deep = nlohmann::json::array({deep});
      h["layers"] = deep;
    });
    EXPECT_NE(e.find("header: not valid JSON: arrays/objects nested deeper than 64 levels"), std::string::npos) << e;
  }
  {
    const std::string e = rewrite([](auto& h) { h["range"] = "p99"; });
    EXPECT_NE(e.find("field 'range' must be minmax, percentile or mse, got \"p99\""), std::string::npos) << e;
  }
  // The ARITH field is stored as scale_form + zero_point_codes; a pair no
  // arithmetic names is rejected ("format" is free text: shortened to make room).
  {
    const std::string e = rewrite([](auto& h) {
      h["format"] = "q";
      h["scale_form"] = "inverse_step";
    });
    EXPECT_NE(e.find("field 'scale_form'"), std::string::npos) << e;
  }
  const auto as_tutorial = [](const std::string& variant) {
    return [variant](auto& h) {
      h["format"] = "q";
      h["scale_form"] = "inverse_step";
      h["zero_point_codes"] = "signed";
      h["qmin"] = -8;
      h["qmax"] = 7;
      h["variant"] = variant;
    };
  };
  EXPECT_EQ(rewrite(as_tutorial("zeropoint:4:group32:minmax:tutorial")), "");
  // Files written before the ARITH field named such a config without it.
  EXPECT_EQ(rewrite(as_tutorial("zeropoint:4:group32:minmax")), "");
  {
    const std::string e = rewrite(as_tutorial("zeropoint:4:group32:mse"));
    EXPECT_NE(e.find("field 'variant'"), std::string::npos) << e;
  }
}

TEST_F(PackedCorruptionTest, SectionBytesAreChecked) {
  const PackedModel m = read_packed_model(good_path_);
  const std::string e = error_of(flipped(static_cast<size_t>(m.layers[3].offset_of("codes") + 5)));
  EXPECT_NE(e.find("payload_sha256 mismatch"), std::string::npos) << e;
  EXPECT_NE(error_of(flipped(good_.size() - 1)).find("payload_sha256"), std::string::npos);
}

TEST_F(PackedCorruptionTest, TruncatedFilesAreRejected) {
  const PackedModel m = read_packed_model(good_path_);
  for (const size_t at : {size_t{0}, size_t{5}, size_t{20}, size_t{kQpackPreambleBytes}, size_t{200},
                          static_cast<size_t>(m.payload_offset), static_cast<size_t>(m.layers[5].offset_of("scales") + 1),
                          good_.size() / 2, good_.size() - 1}) {
    const std::string e = error_of(good_.substr(0, at));
    EXPECT_NE(e, "") << "truncated at " << at;
    EXPECT_TRUE(e.find("truncated") != std::string::npos || (at < 8 && e.find("bad magic") != std::string::npos))
        << "truncated at " << at << ": " << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
  // Extra bytes after the payload are also an error.
  EXPECT_NE(error_of(good_ + std::string(3, '\0')).find("truncated or padded"), std::string::npos);
}

// ---- version 1 files stay readable; version 2 corruption ----

TEST(PackedModelFileTest, Version1FilesLoadBitForBit) {
  const std::string tiny = testing::fixture("tiny.pt");
  for (const std::string spec : {"absmax:4:group32", "zeropoint:3:channel:mse:tutorial"}) {
    const Variant variant = parse_variant(spec);
    const std::string out = temp_path("v1.qpack");
    write_packed_model_v1(tiny, variant, "", "", out, true, true);
    std::string b = read_bytes(out);
    ASSERT_EQ(b[8], 1);
    const PackedModel m = read_packed_model(out);
    EXPECT_EQ(m.version, 1u);
    EXPECT_FALSE(m.embedded_stripped);
    EXPECT_EQ(m.variant.name, canonical_spec(variant));
    ContractModel original = ContractModel::load(tiny);
    ContractModel loaded = load_packed_model(out);
    const auto a = original.linear_layers();
    const auto l = loaded.linear_layers();
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_TRUE(torch::equal(l[i].weight, fake_quantize(a[i].weight, variant.config, a[i].name))) << spec << a[i].name;
    }
  }
}

class QpackV2CorruptionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    good_path_ = temp_path("good-v2.qpack");
    // The encoder's layers only: the decoder's keep their float32 weights in the embedded model.
    write_packed_model(testing::fixture("tiny.pt"), parse_variant("zeropoint:4:group32"), "^encoder", "", good_path_,
                       true, true);
    good_ = read_bytes(good_path_);
    const PackedModel m = read_packed_model(good_path_);
    header_text_ = good_.substr(kQpackPreambleBytes, static_cast<size_t>(m.header_bytes));
  }
  static std::string error_of(const std::string& bytes) {
    const std::string path = temp_path("bad-v2.qpack");
    write_bytes(path, bytes);
    return load_error(path);
  }
  // Rewrites the header (same length, matching digest) so that only the field checks catch it.
  static std::string rewrite(const std::function<void(nlohmann::json&)>& change) {
    nlohmann::json h = nlohmann::json::parse(header_text_);
    h["format"] = "";  // free text: room for longer values
    change(h);
    std::string text = h.dump(1) + "\n";
    if (text.size() > header_text_.size()) return std::string("header grew");
    text.insert(text.size() - 1, header_text_.size() - text.size(), ' ');
    std::string b = good_;
    b.replace(kQpackPreambleBytes, header_text_.size(), text);
    b.replace(24, 64, sha256(text));
    return error_of(b);
  }
  static inline std::string good_path_;
  static inline std::string good_;
  static inline std::string header_text_;
};

TEST_F(QpackV2CorruptionTest, TheGoodFileLoads) {
  EXPECT_EQ(load_error(good_path_), "");
  EXPECT_EQ(rewrite([](auto&) {}), "");
}

TEST_F(QpackV2CorruptionTest, HostileSectionsAreDataErrorsNamingTheField) {
  const auto expect = [](const std::string& e, const std::string& needle) {
    EXPECT_NE(e.find(needle), std::string::npos) << e;
    EXPECT_NE(e.find("bad-v2.qpack"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  };
  expect(rewrite([](auto& h) { h["layers"][0]["sections"][1]["dtype"] = "f64"; }), "layers[0].sections[1].dtype");
  expect(rewrite([](auto& h) { h["layers"][0]["sections"][1]["dtype"] = "i16"; }), "layers[0]");
  expect(rewrite([](auto& h) { h["layers"][0]["sections"][1]["count"] = 3; }), "layers[0].sections[1].bytes");
  expect(rewrite([](auto& h) { h["layers"][0]["sections"][0]["bytes"] = 10; }), "layers[0].sections[0].bytes");
  expect(rewrite([](auto& h) {
           h["layers"][0]["sections"][1]["offset"] = h["layers"][0]["sections"][0]["offset"];
         }),
         "overlaps");
  expect(rewrite([](auto& h) { h["layers"][0]["sections"][2]["name"] = "zeros"; }), "layers[0]");
  expect(rewrite([](auto& h) { h["layers"][0]["sections"] = nlohmann::json::array(); }), "layers[0].sections");
  expect(rewrite([](auto& h) { h["layers"][0]["sections"].erase(2); }), "layers[0]");
  expect(rewrite([](auto& h) { h["layers"][0]["sections"][0]["count"] = -1; }), "layers[0].sections[0].count");
  expect(rewrite([](auto& h) { h["variant"] = "nosuch:4"; }), "field 'variant'");
  expect(rewrite([](auto& h) { h["variant"] = "zeropoint:4:group32"; }), "canonical");
  expect(rewrite([](auto& h) { h["variant"] = "fp32"; }), "field 'variant'");
  expect(rewrite([](auto& h) { h["weight_format"] = "zeropoint:4:group64:minmax"; }), "field 'weight_format'");
  // A different format with the same sections: the byte counts no longer agree.
  expect(rewrite([](auto& h) {
           h["variant"] = "zeropoint:8:group32:minmax";
           h["weight_format"] = "zeropoint:8:group32:minmax";
         }),
         "layers[0]");
  // A layer renamed to an unpacked one of the same shape: the stripped weight is restored by nothing.
  expect(rewrite([](auto& h) {
           const std::string name = h["layers"][0]["name"].template get<std::string>();
           ASSERT_EQ(name.rfind("encoder.", 0), 0u);
           h["layers"][0]["name"] = "decoder." + name.substr(8);
         }),
         "stripped");
  expect(rewrite([](auto& h) { h["source_model"]["section"]["sha256"] = std::string(64, '0'); }),
         "source_model.section.sha256");
}

TEST_F(QpackV2CorruptionTest, CodesOutOfRangeAreDataErrors) {
  // absmax:4 codes are 0..14 (q + 7): a 15 is corrupt even with a matching payload digest.
  const std::string out = temp_path("a4-v2.qpack");
  write_packed_model(testing::fixture("tiny.pt"), parse_variant("absmax:4:channel"), "", "", out, true, true);
  std::string b = read_bytes(out);
  const PackedModel m = read_packed_model(out);
  b[static_cast<size_t>(m.layers[0].offset_of("codes"))] = static_cast<char>(0xff);
  const std::string header(b.substr(kQpackPreambleBytes, static_cast<size_t>(m.header_bytes)));
  nlohmann::json h = nlohmann::json::parse(header);
  h["payload_sha256"] = sha256(std::string_view(b).substr(static_cast<size_t>(m.payload_offset)));
  std::string text = h.dump(1) + "\n";
  ASSERT_LE(text.size(), header.size());
  text.insert(text.size() - 1, header.size() - text.size(), ' ');
  b.replace(kQpackPreambleBytes, header.size(), text);
  b.replace(24, 64, sha256(text));
  const std::string e = error_of(b);
  EXPECT_NE(e.find("exceeds qmax - qmin"), std::string::npos) << e;
  EXPECT_NE(e.find("layers[0]"), std::string::npos) << e;
}

}  // namespace
}  // namespace quantppl
