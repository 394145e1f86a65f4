// A WeightFormat over quantize.h's uniform grids, for the method tests only, until the
// format table (formats/format_table.h, issue 14) lands; then the tests use its formats.
// Groups are the quantize.h blocks: group G, per channel (G = in) or per tensor (0).
#pragma once

#include <memory>
#include <string>

#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/formats/weight_format.h"
#include "quantppl/quantize.h"

namespace quantppl::testing {

class UniformGroupQuantizer : public ColumnGroupQuantizer {
 public:
  UniformGroupQuantizer(QParams params, QuantConfig config) : params_(std::move(params)), config_(config) {
    // Applied one column at a time: each row of the column is its own block.
    config_.granularity = Granularity::kPerChannel;
  }
  torch::Tensor fake_quantize_column(const torch::Tensor& column, int64_t /*j*/) const override {
    const int64_t rows = column.size(0);
    torch::Tensor x = column.reshape({rows, 1}).clone();
    QParams p = params_;
    if (p.scale.size(0) != rows) {  // per tensor: one block for every row
      p.scale = p.scale.expand({rows, 1}).contiguous();
      p.zero_point = p.zero_point.expand({rows, 1}).contiguous();
    }
    fake_quantize_with_(x, p, config_, "column");
    return x.reshape({rows});
  }

 private:
  QParams params_;
  QuantConfig config_;
};

class UniformTestFormat : public WeightFormat {
 public:
  explicit UniformTestFormat(QuantConfig config) : config_(config) {}
  std::string spec() const override { return "test-uniform"; }
  int64_t group_columns(int64_t in, const std::string& name) const override {
    switch (config_.granularity) {
      case Granularity::kPerTensor: return 0;
      case Granularity::kPerChannel: return in;
      case Granularity::kPerGroup:
        if (in % config_.group_size != 0) throw UsageError("group does not divide " + name);
        return config_.group_size;
    }
    return 0;
  }
  double bits_per_weight(int64_t, int64_t) const override { return config_.bits; }
  int64_t packed_bytes(int64_t, int64_t) const override { return 0; }
  std::unique_ptr<PreparedWeight> prepare(const torch::Tensor&, const std::string&) const override {
    throw UsageError("not in the test format");
  }
  void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst, const std::string& name) const override {
    dst.copy_(fake_quantize(src, config_, name));
  }
  std::unique_ptr<ColumnGroupQuantizer> begin_group(const torch::Tensor& whole_weight, const torch::Tensor& group_cols,
                                                    const std::string& name) const override {
    QuantConfig c = config_;
    if (c.granularity == Granularity::kPerTensor) {
      return std::make_unique<UniformGroupQuantizer>(choose_qparams(whole_weight, c, name), config_);
    }
    c.granularity = Granularity::kPerChannel;  // the group's columns: one block per row
    return std::make_unique<UniformGroupQuantizer>(choose_qparams(group_cols.contiguous(), c, name), config_);
  }
  torch::Tensor unpack(const PackedWeight&, const std::string&) const override {
    throw UsageError("not in the test format");
  }

 private:
  QuantConfig config_;
};

}  // namespace quantppl::testing
