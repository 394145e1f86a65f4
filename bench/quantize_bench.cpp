// Benchmarks of the quantization primitives (issue: performance).
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "quantppl/quantize.h"

namespace {

void BM_FakeQuantizePerTensorAbsmax8(benchmark::State& state) {
  torch::manual_seed(0);
  torch::Tensor w = torch::randn({state.range(0), 512});
  const quantppl::QuantConfig config = quantppl::numpy_seed_config(quantppl::Scheme::kAbsmax, 8);
  for (auto _ : state) {
    torch::Tensor out = quantppl::fake_quantize(w, config);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * w.numel() * 4);
}
BENCHMARK(BM_FakeQuantizePerTensorAbsmax8)->Arg(512)->Arg(2048);

}  // namespace

BENCHMARK_MAIN();
