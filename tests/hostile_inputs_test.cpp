// Hostile inputs (issue 20) at the library level: outputs that must not be
// replaced, input files with stated maxima, linear-time layer patterns,
// printable error messages, the activity named in an out-of-memory report,
// and --check entries matched by canonical spec. The end-to-end runs of the
// same classes are tests/reliability/test_hostile_inputs.py.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <new>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "fixture_support.h"
#include "quantppl/compare.h"
#include "quantppl/contract_model.h"
#include "quantppl/error.h"
#include "quantppl/input_file.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/output_file.h"
#include "quantppl/regression_check.h"
#include "quantppl/text_windows.h"
#include "quantppl/tokenizer.h"

namespace quantppl {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

// A fresh directory per test, removed afterwards.
class HostileDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("quantppl-hostile-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  void write(const std::string& name, const std::string& content) const {
    std::ofstream(path(name), std::ios::binary) << content;
  }
  // Every entry of the directory: to prove no temporary file is left.
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
  fs::path dir_;
};

template <typename E, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "no exception";
}

// ---- outputs ----

TEST_F(HostileDir, SymlinksAreNeverReplacedEvenWithForce) {
  write("target.json", "keep");
  fs::create_symlink(path("target.json"), path("link.json"));
  fs::create_symlink("/proc/self/fd/1", path("stdout.json"));
  fs::create_symlink(path("missing"), path("dangling.json"));
  for (const char* name : {"link.json", "stdout.json", "dangling.json"}) {
    for (const bool force : {false, true}) {
      const std::string msg = error_of<IoError>([&] { write_file_atomically(path(name), "new", force); });
      EXPECT_THAT(msg, HasSubstr("cannot write '" + path(name) + "': it is a symbolic link")) << name;
      EXPECT_THAT(msg, HasSubstr("only a regular file is ever replaced"));
      EXPECT_TRUE(fs::is_symlink(fs::symlink_status(path(name)))) << name;
    }
  }
  EXPECT_THAT(error_of<IoError>([&] { check_output_path(path("dangling.json"), false); }), HasSubstr("(dangling)"));
  std::ifstream in(path("target.json"));
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "keep");
  EXPECT_EQ(entries(), (std::vector<std::string>{"dangling.json", "link.json", "stdout.json", "target.json"}));
}

TEST_F(HostileDir, DevicesFifosAndDirectoriesAreNeverReplaced) {
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0);
  fs::create_directory(path("dir"));
  std::vector<std::pair<std::string, std::string>> cases = {{"fifo", "a FIFO"}, {"dir", "a directory"}};
  if (::mknod(path("null").c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0) cases.emplace_back("null", "a character device");
  for (const auto& [name, kind] : cases) {
    EXPECT_THAT(error_of<IoError>([&] { write_file_atomically(path(name), "x", /*force=*/true); }),
                HasSubstr("it is " + kind));
  }
  if (fs::exists(path("null"))) {
    EXPECT_TRUE(fs::is_character_file(path("null")));
  }
  EXPECT_TRUE(fs::is_fifo(path("fifo")));
}

TEST_F(HostileDir, AnOutputThatIsAnInputIsAUsageError) {
  write("model.pt", "model bytes");
  ASSERT_EQ(::link(path("model.pt").c_str(), path("hardlink.pt").c_str()), 0);
  fs::create_symlink(path("model.pt"), path("symlink.pt"));
  const std::vector<std::string> inputs = {"", "-", path("model.pt")};
  for (const std::string& out : {path("model.pt"), path("hardlink.pt"), dir_.string() + "/./model.pt"}) {
    EXPECT_THAT(error_of<UsageError>([&] { write_file_atomically(out, "x", /*force=*/true, inputs); }),
                HasSubstr("it is the input '" + path("model.pt") + "'"))
        << out;
  }
  // Through a symlink to the input: refused as the same file, before the symlink rule.
  EXPECT_THAT(error_of<UsageError>([&] { check_output_path(path("symlink.pt"), true, inputs); }),
              HasSubstr("it is the input"));
  std::ifstream in(path("model.pt"));
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "model bytes");
  write_file_atomically(path("other.pt"), "fine", /*force=*/false, inputs);
  EXPECT_TRUE(fs::is_regular_file(path("other.pt")));
}

TEST_F(HostileDir, A250ByteNameIsWrittenAndA256ByteNameIsRefused) {
  const std::string name250 = std::string(245, 'n') + ".json";
  write_file_atomically(path(name250), "ok", /*force=*/false);
  write_file_atomically(path(name250), "again", /*force=*/true);  // the replace path, temporary name cut too
  EXPECT_EQ(entries(), std::vector<std::string>{name250});
  // A multi-byte UTF-8 name: the temporary name is cut on a character boundary.
  std::string utf8;
  while (utf8.size() < 248) utf8 += "\xc3\xa9";  // é
  write_file_atomically(path(utf8), "ok", false);
  EXPECT_TRUE(fs::exists(path(utf8)));
  const std::string name256(256, 'x');
  EXPECT_THAT(error_of<IoError>([&] { check_output_path(path(name256), false); }),
              HasSubstr("file name is 256 bytes, longer than the 255"));
}

TEST_F(HostileDir, AStreamWriterFailureRemovesTheTemporaryFile) {
  EXPECT_THROW(write_stream_atomically(path("out.pt"), false, {},
                                       [](std::ostream& out) {
                                         out << "partial";
                                         throw DataError("writer failed");
                                       }),
               DataError);
  EXPECT_TRUE(entries().empty());
  write_stream_atomically(path("out.pt"), false, {}, [](std::ostream& out) { out << "complete"; });
  std::ifstream in(path("out.pt"));
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "complete");
}

TEST(HostileTempDir, AMissingTmpdirIsOneIoErrorNamingIt) {
  const char* old = std::getenv("TMPDIR");
  const std::string saved = old != nullptr ? old : "";
  ::setenv("TMPDIR", "/nonexistent-quantppl-tmp", 1);
  const std::string msg = error_of<IoError>([] { temp_directory(); });
  if (old != nullptr) {
    ::setenv("TMPDIR", saved.c_str(), 1);
  } else {
    ::unsetenv("TMPDIR");
  }
  EXPECT_THAT(msg, HasSubstr("TMPDIR '/nonexistent-quantppl-tmp' is not a usable directory"));
}

// ---- input files ----

TEST_F(HostileDir, NonRegularInputsAreRefusedBeforeReading) {
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0);  // no writer: a blocking open would hang
  EXPECT_THAT(error_of<IoError>([&] { read_input_file(path("fifo"), kTextInput); }),
              HasSubstr("text '" + path("fifo") + "' is a FIFO, expected a regular file"));
  EXPECT_THAT(error_of<IoError>([] { read_input_file("/dev/zero", kTokenizerInput); }),
              HasSubstr("tokenizer '/dev/zero' is a character device"));
  EXPECT_THAT(error_of<IoError>([&] { read_input_file(dir_.string(), kCheckFileInput); }),
              HasSubstr("is a directory"));
  EXPECT_THAT(error_of<IoError>([&] { read_input_file(path("missing"), kTextInput); }),
              HasSubstr("cannot open text '" + path("missing") + "': No such file or directory"));
}

TEST_F(HostileDir, AnInputAboveItsMaximumIsRefusedFromItsSize) {
  // Sparse: the size is stated without writing 64 MiB.
  for (const InputKind* kind : {&kTextInput, &kTokenizerInput, &kCheckFileInput}) {
    const std::string big = path("big");
    std::ofstream(big).close();
    fs::resize_file(big, static_cast<uintmax_t>(kind->max_bytes) + 1);
    EXPECT_THAT(error_of<DataError>([&] { read_input_file(big, *kind); }),
                HasSubstr(std::to_string(kind->max_bytes + 1) + " bytes, more than the " +
                          std::to_string(kind->max_bytes >> 20) + " MiB maximum"));
    fs::resize_file(big, static_cast<uintmax_t>(kind->max_bytes));
    EXPECT_EQ(read_input_file(big, *kind).size(), static_cast<size_t>(kind->max_bytes));
  }
}

TEST_F(HostileDir, TextIsValidatedWhileItIsRead) {
  // A NUL in the first block fails before the rest is read (the callback counts the blocks seen).
  std::string text(1 << 20, 'a');
  text[10] = '\0';
  write("nul.txt", text);
  EXPECT_THAT(error_of<DataError>([&] { read_text_file(path("nul.txt")); }), HasSubstr("NUL byte at byte offset 10"));
  // A multi-byte character cut by the 64 KiB block boundary is valid; a bad byte after it is found.
  std::string cut(65535, 'a');
  cut += "\xe2\x82\xac";  // bytes 65535..65537: "€" across the boundary
  cut += "b\xff";
  write("cut.txt", cut);
  EXPECT_THAT(error_of<DataError>([&] { read_text_file(path("cut.txt")); }),
              HasSubstr("not valid UTF-8 at byte offset 65539"));
}

// ---- layer patterns (RE2) ----

std::vector<LinearLayer> fake_layers() {
  std::vector<LinearLayer> layers;
  for (const char* name : {"encoder.block.0.layer.0.SelfAttention.q", "decoder.block.1.layer.2.DenseReluDense.wo",
                           "lm_head"}) {
    LinearLayer l;
    l.name = name;
    layers.push_back(l);
  }
  return layers;
}

TEST(HostileRegex, CatastrophicPatternsFinishInLinearTime) {
  const std::string long_name(100000, 'a');
  std::vector<LinearLayer> layers = fake_layers();
  layers[0].name = long_name;
  const auto start = std::chrono::steady_clock::now();
  // std::regex backtracked exponentially on these; RE2 answers "no match" at once.
  for (const std::string& bomb : {std::string("(.*.*)*Z"), std::string("(a|a)*Z"), std::string("(a*)*Z")}) {
    EXPECT_THAT(error_of<UsageError>([&] { select_layers(layers, bomb, ""); }),
                HasSubstr("no Linear layer is selected by --include '" + bomb + "'"));
  }
  // 20,000 nested groups: std::regex overflowed the stack compiling it.
  const std::string nested = std::string(20000, '(') + "lm_head" + std::string(20000, ')');  // selects 1
  EXPECT_EQ(select_layers(layers, nested, "").size(), 1u);
  // A coarse bound (the fix is the algorithm, not speed): seconds where backtracking never ends.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
}

TEST(HostileRegex, RejectedPatternsNameTheFlagAndTheSyntax) {
  const auto layers = fake_layers();
  EXPECT_THAT(error_of<UsageError>([&] { select_layers(layers, "(q)\\1", ""); }),
              HasSubstr("--include '(q)\\1' is not a valid regular expression: invalid escape sequence"));
  EXPECT_THAT(error_of<UsageError>([&] { select_layers(layers, "", "(?=q)"); }),
              AllOf(HasSubstr("--exclude '(?=q)'"), HasSubstr("RE2 syntax")));
  // A program beyond kMaxLayerPatternMemory.
  EXPECT_THAT(error_of<UsageError>([&] { select_layers(layers, "\\pL{1000}", ""); }),
              HasSubstr("--include '\\pL{1000}' is not a valid regular expression: it needs more than the 8 MiB"));
  // Same selections as before for the patterns the README shows.
  EXPECT_EQ(select_layers(layers, "^encoder\\.", "").size(), 1u);
  EXPECT_EQ(select_layers(layers, "", "lm_head$").size(), 2u);
  EXPECT_EQ(select_layers(layers, "DenseReluDense\\.w[io]", "").size(), 1u);
}

// ---- error messages ----

TEST(HostileMessages, ControlBytesAreEscapedNotCut) {
  static const char kRaw[] = "variant 'abs\0max' bad\nline\x1b[2J";
  const DataError e(std::string(kRaw, sizeof kRaw - 1));
  EXPECT_EQ(std::string(e.what()), "variant 'abs\\0max' bad\\nline\\x1b[2J");
  EXPECT_EQ(printable("tab\tand \xc3\xa9 kept"), "tab\tand \xc3\xa9 kept");
}

TEST(HostileMessages, OutOfMemoryNamesTheInnermostActivity) {
  try {
    const ActivityScope outer("loading model 'm.pt'");
    const ActivityScope inner("loading tokenizer 't.model'");
    throw std::bad_alloc();
  } catch (const std::bad_alloc&) {
    EXPECT_EQ(ActivityScope::failed_activity(), "loading tokenizer 't.model'");
  }
  { const ActivityScope fine("reading text 'x'"); }
  EXPECT_EQ(ActivityScope::failed_activity(), "");
}

// ---- --check names ----

TEST(HostileCheck, ACanonicalSpellingMatchesTheShortOne) {
  CompareReport report;
  VariantResult r;
  r.variant = "absmax:8";
  r.ppl = 10.0;
  report.results.push_back(r);
  EXPECT_TRUE(check_regressions(report, std::vector<ExpectedPerplexity>{{"absmax:8:tensor:minmax", 10.0, 0.5}}).empty());
  EXPECT_TRUE(check_regressions(report, std::vector<ExpectedPerplexity>{{" absmax:8:tensor ", 10.02, 0.5}}).empty());
  const auto drift = check_regressions(report, std::vector<ExpectedPerplexity>{{"absmax:8:tensor:minmax", 11.0, 0.5}});
  ASSERT_EQ(drift.size(), 1u);
  EXPECT_THAT(drift[0], HasSubstr("drifted"));
  const auto other = check_regressions(report, std::vector<ExpectedPerplexity>{{"absmax:8:channel", 10.0, 0.5}});
  ASSERT_EQ(other.size(), 1u);
  EXPECT_THAT(other[0], HasSubstr("not evaluated"));
}

// ---- tokenizers ----

TEST(HostileTokenizer, AForeignTokenizerIsRefusedNamingBothFiles) {
  ContractModel model = ContractModel::load(testing::fixture("tiny.pt"), testing::fixture("tiny.model"));
  EXPECT_EQ(model.tokenizer().piece_count(), 300);
  const std::string default_model = default_model_path();
  if (!fs::exists(default_model)) GTEST_SKIP() << "no " << default_model;
  const std::string msg = error_of<DataError>(
      [&] { ContractModel::load(default_model, testing::fixture("tiny.model")); });
  EXPECT_THAT(msg, HasSubstr("tokenizer '" + testing::fixture("tiny.model") + "' does not belong to this model"));
  EXPECT_THAT(msg, HasSubstr("model '" + default_model + "': tokenizer.model has 3000"));
}

}  // namespace
}  // namespace quantppl
