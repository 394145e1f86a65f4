// Seeing the input of every selected Linear layer during a forward pass of an
// ordinary contract model, with no re-export and no hooks (a scripted module
// has none that can be added after scripting).
//
// How (shared/notes/activation-capture.md): the module's `forward` graph is
// copied and inlined (torch::jit::Inline), so that every Linear submodule call
// becomes an `aten::linear(x, weight, bias)` node of the top-level graph. A
// node's layer is named by the chain of `prim::GetAttr` nodes that produces its
// weight from the graph's `self` input ("encoder.block.0.layer.0.SelfAttention.q"
// + ".weight"). The copy returns a tuple (forward's own output, x_0, ..., x_{G-1})
// with one x per DISTINCT input Value: layers whose aten::linear reads the very
// same Value (q/k/v of one attention; wi_0/wi_1 of a gated feed-forward; the
// cross-attention k/v of every decoder block, which all read the encoder
// output) form one input group and cost one tensor. The copy is run as a
// torch::jit::GraphFunction whose first argument is the module object, so the
// weights are read from the module at run time (edits in place are seen).
//
// The graph's other outputs are unchanged, so the first tuple element is what
// module.forward returns (the same operations on the same tensors: bit-equal,
// tested). With `keep_output = false` the forward output is dropped and dead
// code eliminated: the last layer's input is still returned, but e.g. the
// lm_head matmul and the logits (B x T x vocab floats) are never computed.
//
// Which token positions an input group belongs to: every group records which
// forward arguments its Value depends on (data flow through the inlined graph,
// in-place ops counted as writes to their first argument). The caller maps
// arguments to position masks (calibration.h: T5's decoder layers depend on
// decoder_input_ids, the encoder's only on input_ids/attention_mask).
//
// Errors (DataError naming the model and layer): a selected layer with no
// aten::linear in the graph, or with more than one (a layer called twice would
// mix two inputs), or one whose call sits inside control flow (an If or Loop
// block: its input is not a value of the top-level graph); a forward that
// fails or returns something other than the tuple.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/ivalue.h>
#include <torch/types.h>

#include "quantppl/contract_model.h"

namespace torch::jit {
struct Graph;
struct GraphFunction;
}  // namespace torch::jit

namespace quantppl {

// One selected Linear layer as the capture sees it.
struct CapturedLayer {
  std::string name;         // module path, as LinearLayer::name
  int64_t in_features = 0;  // the weight's columns
  int64_t group = 0;        // index of its input group (CapturedBatch::inputs)
};

// One input group: the Value one or more layers read.
struct InputGroup {
  std::vector<size_t> layers;  // indices into ActivationCapture::layers(), in order
  int64_t in_features = 0;
  // Bit a is set when the Value depends on forward argument a (0-based, self
  // not counted: for T5, bit 0 input_ids, 1 attention_mask, 2 decoder_input_ids).
  uint64_t depends_on = 0;
};

struct CapturedBatch {
  torch::Tensor output;               // forward's own output; undefined without keep_output
  std::vector<torch::Tensor> inputs;  // one per input group, float32 [..., in_features]
};

class ActivationCapture {
 public:
  // Builds the capture graph for `layer_names` (each a Linear layer of
  // `model`, in any order; layers() keeps this order). The model must outlive
  // the capture. UsageError for an empty list or a repeated name; DataError as
  // in the file comment.
  ActivationCapture(ContractModel& model, const std::vector<std::string>& layer_names, bool keep_output = true);
  ~ActivationCapture();
  ActivationCapture(ActivationCapture&&) noexcept;
  ActivationCapture& operator=(ActivationCapture&&) noexcept;

  const std::vector<CapturedLayer>& layers() const { return layers_; }
  const std::vector<InputGroup>& groups() const { return groups_; }
  // Forward's arguments after self (3 for a T5 contract model).
  size_t argument_count() const { return argument_count_; }

  // Runs the capture graph on `arguments` (forward's arguments without self:
  // for T5 input_ids, attention_mask, decoder_input_ids) under
  // torch::InferenceMode. Every group input is checked to be a float32 tensor
  // whose last dimension is the group's in_features (DataError otherwise).
  CapturedBatch run(const std::vector<c10::IValue>& arguments);

  // The capture graph (for tests and debugging).
  const torch::jit::Graph& graph() const;

 private:
  ContractModel* model_;
  std::vector<CapturedLayer> layers_;
  std::vector<InputGroup> groups_;
  size_t argument_count_ = 0;
  bool keep_output_ = true;
  std::shared_ptr<torch::jit::Graph> graph_;
  std::unique_ptr<torch::jit::GraphFunction> function_;
};

}  // namespace quantppl
