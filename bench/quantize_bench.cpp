// Google Benchmark binary for issue 8 (performance). Each benchmark runs on
// the Linear weights of one contract model ($QUANTPPL_BENCH_MODEL, default
// models/default.pt; scripts/bench.sh passes a flan-t5-small-shaped one),
// so that its time can be divided by a physical reference measured in the
// same run:
//
//   BM_CopyLinearWeights/threads:T            copy_ of every selected weight (the reference: 1 read + 1 write)
//   BM_RestoreWeights/threads:T               WeightBackup::restore (should cost one copy)
//   BM_FakeQuantize/<variant>/threads:T       choose parameters + fake-quantize every weight from the
//                                             backup into the live weight (what a variant costs once)
//   BM_ApplyVariantParams/<variant>/threads:T parameters known: fake_quantize_into only (per batch in compare)
//   BM_FakeQuantizeReference/<variant>/threads:T  restore + the plain tensor-op reference, in place
//   BM_FormatFakeQuantize/<spec>/threads:T    prepare_variant + apply_prepared (parameters, then x_hat of
//                                             every weight from the backup into the live weight) for
//                                             every example spec of every row of formats/format_table.h
//                                             but range searches (issue 14: within 2x a copy; new rows
//                                             appear here without edits)
//   BM_Hqq/<spec>/threads:T                   hqq_prepare (HQQ's zero-point search) + fake_quantize_into of
//                                             every weight from the backup into the live weight, on the
//                                             zero-point grids of kHqqSpecs (issue 16: within 20x a copy)
//   BM_Sgemm/threads:T                        512x512 @ 512x2048 float32 matmul; counter flops_per_second
//   BM_JitLoad                                torch::jit::load alone
//   BM_LoadContractModel                      load_model_file: jit::load + metadata + tokenizer + layers
//
// T is set with configure_runtime (LibTorch and OpenBLAS threads). OpenMP's
// wait policy is made passive before the libraries initialise, as the CLI
// does (src/openmp_wait_policy.h).
#include <benchmark/benchmark.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "quantppl/compare.h"
#include "quantppl/contract_model.h"
#include "quantppl/formats/format_table.h"
#include "quantppl/formats/spec_fields.h"
#include "quantppl/methods/hqq.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/packed_model.h"
#include "quantppl/quantize.h"
#include "quantppl/runtime.h"
#include "quantppl/variant_spec.h"
#include "../src/openmp_wait_policy.h"

namespace {

using quantppl::ContractModel;
using quantppl::WeightBackup;

std::string model_path() {
  const char* env = std::getenv("QUANTPPL_BENCH_MODEL");
  return env != nullptr && *env != '\0' ? env : quantppl::default_model_path();
}

// One model and one backup for the whole run (loading is measured separately).
struct Fixture {
  ContractModel model;
  std::unique_ptr<WeightBackup> backup;
  int64_t bytes = 0;
  Fixture() : model(quantppl::load_model_file(model_path())) {
    backup = std::make_unique<WeightBackup>(model.linear_layers(), quantppl::BackupStorage::kMemory);
    bytes = 4 * backup->parameter_count();
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void set_threads(int threads) { quantppl::configure_runtime(threads); }

void BM_CopyLinearWeights(benchmark::State& state, int threads) {
  Fixture& f = fixture();
  set_threads(threads);
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    for (size_t i = 0; i < f.backup->layers().size(); ++i) f.backup->layers()[i].weight.copy_(f.backup->original(i));
  }
  state.SetBytesProcessed(state.iterations() * f.bytes);
}

void BM_RestoreWeights(benchmark::State& state, int threads) {
  Fixture& f = fixture();
  set_threads(threads);
  for (auto _ : state) f.backup->restore();
  state.SetBytesProcessed(state.iterations() * f.bytes);
}

void BM_FakeQuantize(benchmark::State& state, const quantppl::QuantConfig& config, int threads) {
  Fixture& f = fixture();
  set_threads(threads);
  for (auto _ : state) {
    const std::vector<quantppl::QParams> params = quantppl::choose_variant_params(*f.backup, config);
    quantppl::apply_variant_params(*f.backup, config, params);
  }
  f.backup->restore();
  state.SetBytesProcessed(state.iterations() * f.bytes);
}

void BM_ApplyVariantParams(benchmark::State& state, const quantppl::QuantConfig& config, int threads) {
  Fixture& f = fixture();
  set_threads(threads);
  const std::vector<quantppl::QParams> params = quantppl::choose_variant_params(*f.backup, config);
  for (auto _ : state) quantppl::apply_variant_params(*f.backup, config, params);
  f.backup->restore();
  state.SetBytesProcessed(state.iterations() * f.bytes);
}

void BM_FakeQuantizeReference(benchmark::State& state, const quantppl::QuantConfig& config, int threads) {
  Fixture& f = fixture();
  set_threads(threads);
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    f.backup->restore();
    for (const quantppl::LinearLayer& layer : f.backup->layers()) {
      torch::Tensor w = layer.weight;
      const quantppl::QParams p = quantppl::choose_qparams_reference(w, config, layer.name);
      quantppl::fake_quantize_with_reference_(w, p, config, layer.name);
    }
  }
  f.backup->restore();
  state.SetBytesProcessed(state.iterations() * f.bytes);
}

void BM_FormatFakeQuantize(benchmark::State& state, const std::string& spec, int threads) {
  Fixture& f = fixture();
  set_threads(threads);
  const std::shared_ptr<const quantppl::WeightFormat> format = quantppl::parse_format(spec);
  // What a variant costs in compare: parameters for every layer (batched where the format can,
  // from the backup's weight summaries, which the first iteration reads once as compare's first
  // variant does), then x_hat written from the backup into the live weights.
  for (auto _ : state) quantppl::apply_prepared(*f.backup, quantppl::prepare_variant(*f.backup, *format));
  f.backup->restore();
  state.SetBytesProcessed(state.iterations() * f.bytes);
}

void BM_Hqq(benchmark::State& state, const std::string& spec, int threads) {
  Fixture& f = fixture();
  set_threads(threads);
  const std::shared_ptr<const quantppl::WeightFormat> format = quantppl::parse_format(spec);
  torch::NoGradGuard no_grad;
  int iterations = 0, weights = 0;
  for (auto _ : state) {
    for (size_t i = 0; i < f.backup->layers().size(); ++i) {
      const quantppl::LinearLayer& layer = f.backup->layers()[i];
      const torch::Tensor& original = f.backup->original(i);
      int it = 0;
      const auto prepared = quantppl::hqq_prepare(original, *format, layer.name, {}, &it);
      torch::Tensor live = layer.weight;
      prepared->fake_quantize_into(original, live);
      iterations += it;
      ++weights;
    }
  }
  f.backup->restore();
  state.SetBytesProcessed(state.iterations() * f.bytes);
  state.counters["mean_iterations"] = weights > 0 ? static_cast<double>(iterations) / weights : 0.0;
}

void BM_Sgemm(benchmark::State& state, int threads) {
  set_threads(threads);
  torch::manual_seed(0);
  const torch::Tensor a = torch::randn({512, 512});
  const torch::Tensor b = torch::randn({512, 2048});
  torch::Tensor c = torch::empty({512, 2048});
  torch::NoGradGuard no_grad;
  for (auto _ : state) torch::mm_out(c, a, b);
  const double flops = 2.0 * 512 * 512 * 2048;
  state.counters["flops_per_second"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_JitLoad(benchmark::State& state) {
  set_threads(2);
  const std::string path = model_path();
  for (auto _ : state) {
    torch::jit::Module m = torch::jit::load(path);
    benchmark::DoNotOptimize(&m);
  }
}

void BM_LoadContractModel(benchmark::State& state) {
  set_threads(2);
  const std::string path = model_path();
  for (auto _ : state) {
    ContractModel m = quantppl::load_model_file(path);
    benchmark::DoNotOptimize(&m);
  }
}

const char* const kVariants[] = {
    "absmax:8",          "absmax:4",          "zeropoint:8",       "absmax:8:channel",   "absmax:4:channel",
    "zeropoint:4:channel", "absmax:4:group64", "zeropoint:4:group128", "absmax:8:tensor:p99.9",
    "absmax:4:channel:mse",
};

// The zero-point grids HQQ is compared on (issue 16: 3 and 4 bits, group 64, 128, per channel) and q4_1.
const char* const kHqqSpecs[] = {"zeropoint:4:group64", "zeropoint:4:group128", "zeropoint:4:channel",
                                 "zeropoint:3:group64", "q4_1"};

void register_all() {
  for (int t : {1, 2}) {
    const std::string suffix = "/threads:" + std::to_string(t);
    auto ms = [](benchmark::internal::Benchmark* b) { b->Unit(benchmark::kMillisecond)->UseRealTime(); };
    ms(benchmark::RegisterBenchmark(("BM_CopyLinearWeights" + suffix).c_str(), BM_CopyLinearWeights, t));
    ms(benchmark::RegisterBenchmark(("BM_RestoreWeights" + suffix).c_str(), BM_RestoreWeights, t));
    for (const char* spec : kVariants) {
      const quantppl::QuantConfig config = quantppl::parse_variant(spec).config;
      const std::string name = std::string("/") + spec + suffix;
      ms(benchmark::RegisterBenchmark(("BM_FakeQuantize" + name).c_str(), BM_FakeQuantize, config, t));
      ms(benchmark::RegisterBenchmark(("BM_ApplyVariantParams" + name).c_str(), BM_ApplyVariantParams, config, t));
      if (config.range != quantppl::RangeMethod::kMse) {  // the reference MSE search takes seconds a pass
        ms(benchmark::RegisterBenchmark(("BM_FakeQuantizeReference" + name).c_str(), BM_FakeQuantizeReference, config,
                                        t));
      }
    }
    for (const quantppl::FormatFamily& family : quantppl::format_families()) {
      for (const std::string& spec : family.examples) {
        // Range searches (percentile, MSE) cost many passes by design and have no target: skipped.
        const std::vector<std::string> fields = quantppl::split_spec_fields(spec);
        const bool search = std::any_of(fields.begin() + 1, fields.end(), [](const std::string& f) {
          return f == "mse" || (f.size() > 1 && f[0] == 'p' && std::isdigit(static_cast<unsigned char>(f[1])));
        });
        if (search) continue;
        ms(benchmark::RegisterBenchmark(("BM_FormatFakeQuantize/" + spec + suffix).c_str(), BM_FormatFakeQuantize,
                                        spec, t));
      }
    }
    for (const char* spec : kHqqSpecs) {
      ms(benchmark::RegisterBenchmark(("BM_Hqq/" + std::string(spec) + suffix).c_str(), BM_Hqq, std::string(spec), t));
    }
    ms(benchmark::RegisterBenchmark(("BM_Sgemm" + suffix).c_str(), BM_Sgemm, t));
  }
  benchmark::RegisterBenchmark("BM_JitLoad", BM_JitLoad)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("BM_LoadContractModel", BM_LoadContractModel)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
  quantppl::startup::apply_openmp_wait_policy(argv);
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
