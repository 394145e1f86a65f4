// WeightBackup's storages: the file-backed one (for models larger than RAM
// allows) and the model-file one (views of the archive the weights were
// loaded from) must behave exactly like the in-memory one, leave no file
// behind, and give the originals back bit for bit.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>

#include "fixture_support.h"
#include "quantppl/contract_model.h"
#include "quantppl/error.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/variant_spec.h"
#include "quantppl/weight_backup.h"

namespace quantppl {
namespace {

using testing::fixture;

// Sets TMPDIR to a fresh empty directory for the test's lifetime.
class TempDirEnv {
 public:
  TempDirEnv() {
    dir_ = std::filesystem::temp_directory_path() / ("quantppl-backup-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    const char* old = std::getenv("TMPDIR");
    had_old_ = old != nullptr;
    if (had_old_) old_ = old;
    ::setenv("TMPDIR", dir_.c_str(), 1);
  }
  ~TempDirEnv() {
    if (had_old_) {
      ::setenv("TMPDIR", old_.c_str(), 1);
    } else {
      ::unsetenv("TMPDIR");
    }
    std::filesystem::remove_all(dir_);
  }
  size_t entries() const {
    return static_cast<size_t>(std::distance(std::filesystem::directory_iterator(dir_), {}));
  }

 private:
  std::filesystem::path dir_;
  std::string old_;
  bool had_old_ = false;
};

TEST(WeightBackupTest, FileStorageMatchesMemoryStorageBitForBit) {
  TempDirEnv tmp;
  ContractModel file_model = ContractModel::load(fixture("tiny.pt"));
  ContractModel memory_model = ContractModel::load(fixture("tiny.pt"));
  std::vector<torch::Tensor> before;
  for (const LinearLayer& l : file_model.linear_layers()) before.push_back(l.weight.clone());

  WeightBackup file_backup(file_model.linear_layers(), BackupStorage::kFile);
  WeightBackup memory_backup(memory_model.linear_layers(), BackupStorage::kMemory);
  EXPECT_EQ(file_backup.storage(), BackupStorage::kFile);
  EXPECT_EQ(memory_backup.storage(), BackupStorage::kMemory);
  EXPECT_EQ(tmp.entries(), 0u) << "the backup file must be unlinked at once";
  EXPECT_EQ(file_backup.parameter_count(), memory_backup.parameter_count());

  for (const char* spec : {"absmax:4", "zeropoint:3:group32:mse", "absmax:8:channel:p99"}) {
    const QuantConfig config = parse_variant(spec).config;
    const std::vector<QParams> file_params = choose_variant_params(file_backup, config);
    const std::vector<QParams> memory_params = choose_variant_params(memory_backup, config);
    apply_variant_params(file_backup, config, file_params);
    apply_variant_params(memory_backup, config, memory_params);
    for (size_t i = 0; i < before.size(); ++i) {
      EXPECT_TRUE(torch::equal(file_model.linear_layers()[i].weight, memory_model.linear_layers()[i].weight))
          << spec << " " << file_backup.layers()[i].name;
      EXPECT_FALSE(torch::equal(file_model.linear_layers()[i].weight, before[i])) << spec;
    }
    file_backup.restore();
    for (size_t i = 0; i < before.size(); ++i) {
      EXPECT_TRUE(torch::equal(file_model.linear_layers()[i].weight, before[i])) << spec;
      EXPECT_TRUE(torch::equal(file_backup.original(i), before[i])) << "released pages are read back";
    }
  }
}

TEST(WeightBackupTest, AutoMapsTheModelFileAndRestoresBitForBit) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  ContractModel memory_model = ContractModel::load(fixture("tiny.pt"));
  std::vector<torch::Tensor> before;
  for (const LinearLayer& l : model.linear_layers()) before.push_back(l.weight.clone());

  WeightBackup backup(model.linear_layers(), BackupStorage::kAuto);
  WeightBackup memory_backup(memory_model.linear_layers(), BackupStorage::kMemory);
  ASSERT_EQ(backup.storage(), BackupStorage::kModel);
  EXPECT_FALSE(backup.pages_dropped()) << "a tiny backup fits in memory";
  ASSERT_EQ(backup.layers().size(), before.size());
  for (size_t i = 0; i < before.size(); ++i) {
    // The views point into the mapped archive, not at the live weights, and hold what LibTorch loaded.
    EXPECT_NE(backup.original(i).data_ptr(), backup.layers()[i].weight.data_ptr());
    EXPECT_TRUE(torch::equal(backup.original(i), before[i])) << backup.layers()[i].name;
  }
  for (const char* spec : {"absmax:8", "zeropoint:3:group32:mse", "absmax:4:channel:p99"}) {
    const QuantConfig config = parse_variant(spec).config;
    apply_variant_params(backup, config, choose_variant_params(backup, config));
    apply_variant_params(memory_backup, config, choose_variant_params(memory_backup, config));
    for (size_t i = 0; i < before.size(); ++i) {
      EXPECT_TRUE(torch::equal(model.linear_layers()[i].weight, memory_model.linear_layers()[i].weight)) << spec;
      EXPECT_FALSE(torch::equal(model.linear_layers()[i].weight, before[i])) << spec;
    }
    backup.restore();
    for (size_t i = 0; i < before.size(); ++i) {
      EXPECT_TRUE(torch::equal(model.linear_layers()[i].weight, before[i])) << spec;
    }
  }
}

TEST(WeightBackupTest, ModelStorageIsOnlyUsedWhenTheFileHoldsTheLoadedBytes) {
  // A weight edited after loading no longer matches the archive: the backup must copy it instead.
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  std::vector<LinearLayer> layers = model.linear_layers();
  {
    torch::NoGradGuard no_grad;
    layers.back().weight.view(-1)[5].add_(1.0f);
  }
  const torch::Tensor edited = layers.back().weight.clone();
  for (const BackupStorage storage : {BackupStorage::kAuto, BackupStorage::kModel}) {
    WeightBackup backup(layers, storage);
    EXPECT_EQ(backup.storage(), BackupStorage::kMemory) << to_string(storage);
    EXPECT_TRUE(torch::equal(backup.original(layers.size() - 1), edited));
  }
}

TEST(WeightBackupTest, LayersWithoutASourceFileAreCopied) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  std::vector<LinearLayer> layers = model.linear_layers();
  for (LinearLayer& l : layers) l.source_path.clear();
  WeightBackup backup(layers, BackupStorage::kAuto);
  EXPECT_EQ(backup.storage(), BackupStorage::kMemory);
  // A file that is not a TorchScript archive: also copied.
  for (LinearLayer& l : layers) l.source_path = fixture("not_torchscript.pt");
  WeightBackup other(layers, BackupStorage::kAuto);
  EXPECT_EQ(other.storage(), BackupStorage::kMemory);
}

TEST(WeightBackupTest, ExplicitMemoryAndFileAreHonoured) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  EXPECT_EQ(WeightBackup(model.linear_layers(), BackupStorage::kMemory).storage(), BackupStorage::kMemory);
  TempDirEnv tmp;
  EXPECT_EQ(WeightBackup(model.linear_layers(), BackupStorage::kFile).storage(), BackupStorage::kFile);
}

TEST(WeightBackupTest, UnwritableTempDirIsAnIoErrorNamingTheRemedy) {
  const char* old = std::getenv("TMPDIR");
  const std::string saved = old != nullptr ? old : "";
  ::setenv("TMPDIR", "/nonexistent-quantppl-dir", 1);
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  try {
    WeightBackup backup(model.linear_layers(), BackupStorage::kFile);
    ADD_FAILURE() << "expected an IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-quantppl-dir"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--backup memory"), std::string::npos) << e.what();
  }
  if (old != nullptr) {
    ::setenv("TMPDIR", saved.c_str(), 1);
  } else {
    ::unsetenv("TMPDIR");
  }
}

TEST(WeightBackupTest, ParsesStorageNames) {
  EXPECT_EQ(parse_backup_storage("file"), BackupStorage::kFile);
  EXPECT_EQ(parse_backup_storage("memory"), BackupStorage::kMemory);
  EXPECT_EQ(parse_backup_storage("auto"), BackupStorage::kAuto);
  EXPECT_THROW(parse_backup_storage("disk"), UsageError);
  EXPECT_EQ(parse_backup_storage("model"), BackupStorage::kModel);
  EXPECT_EQ(to_string(BackupStorage::kFile), "file");
  EXPECT_EQ(to_string(BackupStorage::kModel), "model");
}

}  // namespace
}  // namespace quantppl
