// libFuzzer target: the quantizer on arbitrary float data (scripts/fuzz.sh).
//
// Input layout (all little-endian, short inputs are padded with zeros):
//   byte 0  config: bit 0 scheme (absmax/zeropoint), bits 1-2 granularity
//           (tensor/channel/group, 3 = tensor), bits 3-4 range (minmax/percentile/mse,
//           3 = minmax), bit 5 torch-tutorial arithmetic (inverse-step scale, signed codes)
//   byte 1  bits = 2 + byte % 7
//   byte 2  group size = 1 + byte % 16; percentile from a fixed table
//   byte 3  shape: rows = byte % 9 (0 = a 1-D tensor), bit 7 float64
//   rest    float32 (or float64) values, at most 512: NaN, Inf, denormals, any magnitude
//
// Contract: input holding NaN or Inf -> DataError; a group size that does not
// divide the row -> UsageError; otherwise codes in [qmin, qmax] and a finite
// fake-quantized tensor of the input's shape. Anything else aborts.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <vector>

#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/quantize.h"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "quantize_fuzz: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace quantppl;
  uint8_t header[4] = {0, 0, 0, 0};
  std::memcpy(header, data, size < 4 ? size : 4);
  const uint8_t* payload = data + (size < 4 ? size : 4);
  const size_t payload_size = size < 4 ? 0 : size - 4;

  const bool tutorial = (header[0] >> 5) & 1;
  const Scheme scheme = (header[0] & 1) ? Scheme::kZeroPoint : Scheme::kAbsmax;
  QuantConfig config = tutorial ? torch_tutorial_config(scheme) : numpy_seed_config(scheme, 2 + header[1] % 7);
  if (tutorial) config.bits = 2 + header[1] % 7;
  const int g = (header[0] >> 1) & 3;
  config.granularity = g == 1 ? Granularity::kPerChannel : g == 2 ? Granularity::kPerGroup : Granularity::kPerTensor;
  config.group_size = config.granularity == Granularity::kPerGroup ? 1 + header[2] % 16 : 0;
  const int r = (header[0] >> 3) & 3;
  config.range = r == 1 ? RangeMethod::kPercentile : r == 2 ? RangeMethod::kMse : RangeMethod::kMinMax;
  static const double kPercentiles[] = {100.0, 99.99, 99.9, 99.0, 90.0, 50.0, 1.0, 1e-6};
  config.percentile = kPercentiles[header[2] % 8];

  const bool f64 = header[3] & 0x80;
  const int64_t rows = header[3] % 9;
  const size_t width = f64 ? 8 : 4;
  int64_t n = static_cast<int64_t>(payload_size / width);
  if (n > 512) n = 512;
  std::vector<double> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (f64) {
      std::memcpy(&values[i], payload + i * 8, 8);
    } else {
      float f;
      std::memcpy(&f, payload + i * 4, 4);
      values[i] = f;
    }
  }
  torch::Tensor x = torch::tensor(values, torch::kFloat64);
  if (!f64) x = x.to(torch::kFloat32);
  if (rows > 0) x = x.narrow(0, 0, (n / rows) * rows).reshape({rows, n / rows});
  bool finite = true;
  for (int64_t i = 0; i < x.numel(); ++i) finite = finite && std::isfinite(values[i]);

  try {
    const QuantizedTensor q = quantize(x, config, "fuzz");
    if (!finite) fail("NaN/Inf input did not raise DataError");
    if (!q.codes.sizes().equals(x.sizes())) fail("codes do not have the input's shape");
    const CodeRange range = code_range(config);
    if (q.codes.numel() > 0 &&
        (q.codes.min().item<int64_t>() < range.qmin || q.codes.max().item<int64_t>() > range.qmax)) {
      fail("a code is outside [qmin, qmax]");
    }
    if (!torch::isfinite(q.params.scale).all().item<bool>() || !torch::isfinite(q.params.zero_point).all().item<bool>()) {
      std::cerr << "x = " << x << "\nscale = " << q.params.scale << "\nzero_point = " << q.params.zero_point << "\n";
      fail("non-finite scale or zero point");
    }
    const torch::Tensor x_hat = fake_quantize(x, config, "fuzz");
    if (!x_hat.sizes().equals(x.sizes()) || x_hat.scalar_type() != x.scalar_type()) fail("fake_quantize changed shape or dtype");
    if (!torch::isfinite(x_hat).all().item<bool>()) {
      std::cerr << "x = " << x << "\nx_hat = " << x_hat << "\nscale = " << q.params.scale << "\nzero_point = " << q.params.zero_point << "\n";
      fail("fake-quantized output is not finite");
    }
    if (!torch::equal(dequantize(q), x_hat)) fail("dequantize(quantize(x)) != fake_quantize(x)");
  } catch (const DataError&) {
    if (finite) fail("DataError on finite input");
  } catch (const UsageError&) {
    // Only a group size that does not divide the row is a usage error here.
    if (config.granularity != Granularity::kPerGroup) fail("UsageError without a group size");
  }
  return 0;
}
