#include "quantppl/methods/activation_capture.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/script.h>

#include <fmt/format.h>

#include "quantppl/error.h"

namespace quantppl {
namespace {

using torch::jit::Block;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

std::string first_line(const std::string& message) { return message.substr(0, message.find('\n')); }

// "a.b.c" when `value` is self.a.b.c through prim::GetAttr nodes, "" otherwise.
std::string attribute_path(const Value* value, const Value* self) {
  std::vector<std::string> names;
  while (value != self) {
    const Node* node = value->node();
    if (node->kind() != c10::prim::GetAttr) return "";
    names.push_back(node->s(c10::attr::name));
    value = node->input(0);
  }
  std::string path;
  for (auto it = names.rbegin(); it != names.rend(); ++it) path += (path.empty() ? "" : ".") + *it;
  return path;
}

// The layer an aten::linear node belongs to: its weight's attribute path without ".weight".
std::string layer_of(const Node* node, const Value* self) {
  const std::string path = attribute_path(node->input(1), self);
  const std::string suffix = ".weight";
  if (path.size() <= suffix.size() || path.compare(path.size() - suffix.size(), suffix.size(), suffix) != 0) return "";
  return path.substr(0, path.size() - suffix.size());
}

void find_linear_nodes(Block* block, const Value* self, bool top_level,
                       std::map<std::string, std::vector<std::pair<Node*, bool>>>& found) {
  for (Node* node : block->nodes()) {
    if (node->kind() == c10::aten::linear && node->inputs().size() >= 2) {
      const std::string name = layer_of(node, self);
      if (!name.empty()) found[name].emplace_back(node, top_level);
    }
    for (Block* sub : node->blocks()) find_linear_nodes(sub, self, false, found);
  }
}

// Which forward arguments each value depends on, as a bit set (bit a: argument a, self not
// counted). A node's outputs depend on everything its inputs, and the values used inside its
// blocks, depend on. An in-place op (aten::xxx_) also writes its first input, which from then
// on carries the op's dependencies too. Views that alias a mutated tensor are not followed:
// T5's graph mutates nothing that a Linear input is a view of.
void propagate_dependencies(const Block* block, std::unordered_map<const Value*, uint64_t>& deps) {
  for (const Node* node : block->nodes()) {
    uint64_t d = 0;
    for (const Value* in : node->inputs()) d |= deps[in];
    for (const Block* sub : node->blocks()) {
      for (const Value* in : sub->inputs()) deps[in] |= d;
      propagate_dependencies(sub, deps);
      for (const Value* out : sub->outputs()) d |= deps[out];
    }
    for (const Value* out : node->outputs()) deps[out] |= d;
    const std::string kind = node->kind().toQualString();
    if (kind.rfind("aten::", 0) == 0 && kind.size() > 7 && kind.back() == '_' && kind[kind.size() - 2] != '_' &&
        !node->inputs().empty()) {
      deps[node->input(0)] |= d;
    }
  }
}

}  // namespace

ActivationCapture::ActivationCapture(ContractModel& model, const std::vector<std::string>& layer_names, bool keep_output)
    : model_(&model), keep_output_(keep_output) {
  const std::string model_name = "model '" + model.path() + "'";
  if (layer_names.empty()) throw UsageError("activation capture: no Linear layer selected");
  std::map<std::string, int64_t> in_features;
  for (const LinearLayer& layer : model.linear_layers()) in_features[layer.name] = layer.weight.size(1);
  std::set<std::string> seen;
  for (const std::string& name : layer_names) {
    if (!seen.insert(name).second) throw UsageError("activation capture: layer '" + name + "' selected twice");
    if (in_features.count(name) == 0) {
      throw UsageError(fmt::format("activation capture: {} has no Linear layer '{}'", model_name, name));
    }
  }

  torch::jit::Function& forward = model.module().get_method("forward").function();
  graph_ = torch::jit::toGraphFunction(forward).graph()->copy();
  torch::jit::Inline(*graph_);
  if (graph_->inputs().empty()) throw DataError(model_name + ": forward has no self argument");
  const Value* self = graph_->inputs()[0];
  argument_count_ = graph_->inputs().size() - 1;
  if (argument_count_ > 64) {
    throw DataError(fmt::format("{}: forward takes {} arguments, at most 64 are supported", model_name, argument_count_));
  }
  if (graph_->outputs().size() != 1) {
    throw DataError(fmt::format("{}: forward's graph has {} outputs, expected 1", model_name, graph_->outputs().size()));
  }

  std::map<std::string, std::vector<std::pair<Node*, bool>>> found;
  find_linear_nodes(graph_->block(), self, true, found);

  std::unordered_map<const Value*, uint64_t> deps;
  for (size_t a = 0; a < argument_count_; ++a) deps[graph_->inputs()[a + 1]] = uint64_t{1} << a;
  propagate_dependencies(graph_->block(), deps);

  std::unordered_map<const Value*, int64_t> group_of_value;
  std::vector<Value*> group_values;
  for (const std::string& name : layer_names) {
    const auto it = found.find(name);
    if (it == found.end()) {
      throw DataError(fmt::format("activation capture: {}: Linear layer '{}' has no aten::linear call in the inlined "
                                  "forward graph (its forward is not a plain nn.Linear call)",
                                  model_name, name));
    }
    if (it->second.size() > 1) {
      throw DataError(fmt::format("activation capture: {}: Linear layer '{}' is called {} times in forward, expected "
                                  "once (its calibration inputs would mix several call sites)",
                                  model_name, name, it->second.size()));
    }
    const auto [node, top_level] = it->second.front();
    if (!top_level) {
      throw DataError(fmt::format("activation capture: {}: Linear layer '{}' is called inside control flow (an if or "
                                  "loop block of forward), which capture does not support",
                                  model_name, name));
    }
    Value* x = node->input(0);
    auto [g, inserted] = group_of_value.emplace(x, static_cast<int64_t>(group_values.size()));
    if (inserted) {
      group_values.push_back(x);
      groups_.push_back({{}, in_features[name], deps[x]});
    }
    groups_[static_cast<size_t>(g->second)].layers.push_back(layers_.size());
    layers_.push_back({name, in_features[name], g->second});
  }

  // Return (output, x_0, ..., x_{G-1}), or (x_0, ..., x_{G-1}).
  std::vector<Value*> elements;
  if (keep_output_) elements.push_back(graph_->outputs()[0]);
  elements.insert(elements.end(), group_values.begin(), group_values.end());
  Node* tuple = graph_->createTuple(elements);
  tuple->insertBefore(graph_->return_node());
  graph_->eraseOutput(0);
  graph_->registerOutput(tuple->output());
  if (!keep_output_) torch::jit::EliminateDeadCode(graph_);

  function_ = std::make_unique<torch::jit::GraphFunction>("quantppl_activation_capture", graph_, nullptr);
}

ActivationCapture::~ActivationCapture() = default;
ActivationCapture::ActivationCapture(ActivationCapture&&) noexcept = default;
ActivationCapture& ActivationCapture::operator=(ActivationCapture&&) noexcept = default;

const torch::jit::Graph& ActivationCapture::graph() const { return *graph_; }

CapturedBatch ActivationCapture::run(const std::vector<c10::IValue>& arguments) {
  const std::string model_name = "model '" + model_->path() + "'";
  if (arguments.size() != argument_count_) {
    throw UsageError(fmt::format("activation capture: forward of {} takes {} arguments, got {}", model_name,
                                 argument_count_, arguments.size()));
  }
  torch::jit::Stack stack;
  stack.reserve(arguments.size() + 1);
  stack.emplace_back(model_->module()._ivalue());
  stack.insert(stack.end(), arguments.begin(), arguments.end());
  c10::IValue result;
  {
    c10::InferenceMode inference;
    try {
      function_->run(stack);
    } catch (const c10::Error& e) {
      throw DataError(model_name + ": forward (activation capture) failed: " + first_line(e.what_without_backtrace()));
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      throw DataError(model_name + ": forward (activation capture) failed: " + first_line(e.what()));
    }
    if (stack.size() != 1) throw DataError(model_name + ": activation capture returned no value");
    result = std::move(stack.front());
  }
  const size_t expected = groups_.size() + (keep_output_ ? 1 : 0);
  if (!result.isTuple() || result.toTupleRef().elements().size() != expected) {
    throw DataError(fmt::format("{}: activation capture returned a {}, expected a tuple of {}", model_name,
                                result.tagKind(), expected));
  }
  const auto& elements = result.toTupleRef().elements();
  CapturedBatch batch;
  size_t next = 0;
  if (keep_output_) batch.output = elements[next++].isTensor() ? elements[0].toTensor() : torch::Tensor();
  for (size_t g = 0; g < groups_.size(); ++g, ++next) {
    const c10::IValue& value = elements[next];
    const std::string& first = layers_[groups_[g].layers.front()].name;
    if (!value.isTensor() || value.toTensor().scalar_type() != torch::kFloat32 || value.toTensor().dim() < 1 ||
        value.toTensor().size(-1) != groups_[g].in_features || !value.toTensor().device().is_cpu()) {
      throw DataError(fmt::format("{}: the input of Linear layer '{}' is not a float32 cpu tensor [..., {}]", model_name,
                                  first, groups_[g].in_features));
    }
    batch.inputs.push_back(value.toTensor());
  }
  return batch;
}

}  // namespace quantppl
