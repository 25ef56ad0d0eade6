// optimizer.h: the one optimizer path (docs/design.md, "Training"). Optimizer::step serves both
// `opt.step()` after a custom backward and the model's training step, on every device: AdamW
// (decoupled weight decay, bias correction per parameter, PyTorch's formula) or SGD (momentum,
// dampening, Nesterov), each parameter with its group's options, one multi-tensor update per
// device. State lives on the parameters' device and follows them when they move.
// A parameter whose update rows (TensorImpl::update_begin/end) leave some out, a model's frozen or
// inactive branches, is updated row by row: the rows outside keep their values and state, and
// each row counts its own updates for the bias correction, as separate per-branch parameters
// would in PyTorch.
#pragma once
#include <atomic>
#include <vector>

#include "../core/tensor.h"

namespace duat {

enum OptimizerKind : int { OPTIMIZER_ADAMW = 0, OPTIMIZER_SGD = 1 };

// One group's options (validated at the JS edge; every field means what PyTorch's does). Kept
// in double, as PyTorch keeps them, so bias corrections such as 1 - beta2^t keep their digits.
struct GroupOptions {
  double lr = 1e-3, weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // AdamW
  double momentum = 0.0, dampening = 0.0;         // SGD
  bool nesterov = false;
};

class Optimizer {
 public:
  // params[i] belongs to group group_of[i].
  Optimizer(OptimizerKind kind, std::vector<Tensor> params, std::vector<int> group_of);
  OptimizerKind kind() const { return kind_; }
  const std::vector<Tensor>& params() const { return params_; }
  size_t group_count() const { return group_count_; }

  // Updates every parameter that has a gradient, with its group's options; gradients scaled by
  // `scale` first. Everything is checked before anything changes (ERROR_SHAPE / ERROR_DEVICE /
  // ERROR_ARGUMENT name the parameter), so a step that throws leaves parameters, state and
  // counters as they were. With scale.skip_non_finite the kernels may skip the update on the
  // device; the caller, once it has read the norm back, calls settle(applied) to keep or take back
  // the counters and new state buffers of that step.
  void step(const std::vector<GroupOptions>& groups, const GradScale& scale = {});
  void settle(bool applied);
  // Completed steps.
  int64_t steps() const { return steps_; }
  void set_steps(int64_t n);

  // Parameter i's state, for checkpoints: AdamW {m, v, step}, SGD {momentum buffer, null, step};
  // tensors are null until the first update made them.
  struct State {
    Tensor a, b;
    int64_t step = 0;
    // Updates per row (dimension 0) once the parameter has been updated by rows; empty until
    // then (every row has had `step`).
    std::vector<int64_t> row_steps;
  };
  State state(size_t i) const;
  // Restores parameter i's state (copied to the parameter's device): shapes and dtypes must fit
  // the parameter, or ERROR_CHECKPOINT says which does not.
  void set_state(size_t i, const State& s);
  // Drops the state and the parameters (the JS optimizer was disposed): every later call but
  // steps() is ERROR_DISPOSED.
  void dispose();
  // The state tensors that exist, for the model's lock.
  std::vector<Tensor> state_tensors() const;

  // Zeroes the gradients' rows that the optimizer does not update, so that norms and clipping
  // see only what trains (a frozen parameter has no gradient in PyTorch).
  static void drop_frozen_gradients(const std::vector<Tensor>& params);

  // One step at a time: a training step in flight owns the optimizer (ERROR_STATE otherwise).
  std::atomic<bool> busy{false};

 private:
  OptimizerKind kind_;
  std::vector<Tensor> params_;
  std::vector<int> group_of_;
  size_t group_count_ = 0;
  std::vector<State> state_;
  int64_t steps_ = 0;
  // Before a step that may be skipped on the device (until settle()).
  std::vector<State> prev_state_;
  int64_t prev_steps_ = -1;
};

}  // namespace duat
