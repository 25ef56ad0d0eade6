// autograd.h: the graph. Every op that produces a tensor from inputs needing gradients records
// a Node holding its backward. backward() walks the graph from the root in reverse topological
// order; backward functions ACCUMULATE into gradient slots, so fan-out sums. The graph (and the
// tensors its backward functions saved) is freed as the walk passes each node.
#pragma once
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "tensor.h"

namespace duat {

// The gradient slots handed to a backward function, one per recorded input. A slot lives on its
// input's device and, when the input is dense, in the input's memory order (empty_like_layout),
// so gradients of strided views need no copies. The incoming `dout` of a backward function is
// laid out like the op's output when that output is dense or its gradient was handed over laid
// out exactly like it (pass; padded rows, ops/branch.cpp), contiguous otherwise.
class Grads {
 public:
  explicit Grads(size_t n) : slots_(n) {}
  // Whether input i wants a gradient (it requires grad and grad mode was on when recorded).
  bool needs(size_t i) const { return inputs_[i] != nullptr; }
  // Whether input i has a gradient buffer already (from the consumers walked before, or made).
  bool has(size_t i) const { return slots_[i] != nullptr; }
  size_t size() const { return slots_.size(); }
  // Input i's gradient buffer, zeroed on first use.
  Tensor& slot(size_t i);
  // For kernels that can either overwrite or accumulate (GEMM's beta): input i's buffer, and
  // *fresh = true when it was just made and holds garbage (write, do not add).
  Tensor& slot_for_write(size_t i, bool* fresh);
  // The same two for kernels that need a contiguous buffer (row kernels): a slot made in
  // another layout is replaced by a contiguous copy.
  Tensor& contiguous_slot(size_t i);
  Tensor& contiguous_slot_for_write(size_t i, bool* fresh);
  // Runs fn(buffer, accumulate) on input i's buffer (any dense layout): accumulate is false when
  // the buffer was just made (write into it), true when it holds gradient already (add to it).
  template <typename F>
  void into(size_t i, F fn) {
    bool fresh = false;
    Tensor& s = slot_for_write(i, &fresh);
    fn(s, !fresh);
  }
  // slot(i) += g (any strides).
  void add(size_t i, const Tensor& g);
  // dout itself when the walk owns it and nothing else references it, so a backward may compute
  // in place over it (GELU's gradient over the incoming one); otherwise a fresh buffer like it.
  Tensor reusable(const Tensor& dout) const;
  // Like add, but when slot i is still empty and g may become it (a view of the gradient the walk
  // owns, handed on once, or a tensor the backward function just made, dense or laid out exactly
  // like the input), no copy is made.
  void pass(size_t i, const Tensor& g);

 private:
  friend void backward(const Tensor&, const Tensor&);
  std::vector<Tensor> slots_;
  std::vector<const TensorImpl*> inputs_;  // null where no gradient is wanted
  bool dout_owned_ = false;    // the incoming gradient belongs to the walk (not the caller's seed)
  Storage* dout_storage_ = nullptr;
  bool dout_passed_ = false;   // handed to a slot already: later passes must copy
  Tensor make_slot(size_t i) const;
};

using BackwardFn = std::function<void(const Tensor& dout, Grads& grads)>;

struct Node {
  std::string name;
  std::vector<Tensor> inputs;  // nullptr where the input needs no gradient
  BackwardFn backward_fn;      // empty once the node has been walked
};

bool grad_enabled();
void set_grad_enabled(bool enabled);  // per thread; default on

// Sets grad mode for a scope and restores the previous mode on exit, exceptions included (worker
// threads are reused, so a mode left behind would leak into the next job on that thread).
class GradMode {
 public:
  explicit GradMode(bool enabled) : prev_(grad_enabled()) { set_grad_enabled(enabled); }
  ~GradMode() { set_grad_enabled(prev_); }
  GradMode(const GradMode&) = delete;
  GradMode& operator=(const GradMode&) = delete;

 private:
  bool prev_;
};

// True if grad mode is on and any input requires grad.
bool any_requires_grad(const Tensor* first, const Tensor* last);
inline bool any_requires_grad(const std::vector<Tensor>& inputs) {
  return any_requires_grad(inputs.data(), inputs.data() + inputs.size());
}
inline bool any_requires_grad(std::initializer_list<Tensor> inputs) {  // {a, b}: no vector made
  return any_requires_grad(inputs.begin(), inputs.end());
}

// Attaches a Node to `out` if any input requires grad. The backward function must capture what
// it needs by value, detaching saved outputs (detach()) so the graph holds no reference cycle.
Tensor record(const Tensor& out, const char* name, const std::vector<Tensor>& inputs, BackwardFn fn);

// The same for an op's inputs named in place ({a, b}): the input list and the BackwardFn (a heap
// block for a closure that captures more than a pointer or two) are made only when a node is, so
// an op run without a gradient (every inference op) pays for neither.
template <typename Fn>
Tensor record(const Tensor& out, const char* name, std::initializer_list<Tensor> inputs, Fn&& fn) {
  if (!any_requires_grad(inputs)) return out;
  return record(out, name, std::vector<Tensor>(inputs), BackwardFn(std::forward<Fn>(fn)));
}

// Backward profiling (off by default): total seconds and calls per node name.
struct NodeProfile {
  std::string name;
  double seconds;
  int64_t calls;
};
void set_backward_profiling(bool on);
std::vector<NodeProfile> backward_profile();  // sorted by time, largest first; resets the totals

// Runs backward from `root`. `seed` is d(root); null means 1 and requires a one-element root.
void backward(const Tensor& root, const Tensor& seed);

}  // namespace duat
