// optimizer.cpp: the one optimizer path (optimizer.h).
#include "optimizer.h"

#include <cmath>
#include <string>

namespace duat {

Optimizer::Optimizer(OptimizerKind kind, std::vector<Tensor> params, std::vector<int> group_of)
    : kind_(kind), params_(std::move(params)), group_of_(std::move(group_of)), state_(params_.size()) {
  check(kind == OPTIMIZER_ADAMW || kind == OPTIMIZER_SGD, ERROR_ARGUMENT, "optimizer: unknown kind");
  check(!params_.empty() && group_of_.size() == params_.size(), ERROR_ARGUMENT,
        "optimizer: needs one group index per parameter");
  for (size_t i = 0; i < params_.size(); i++) {
    check(params_[i] != nullptr, ERROR_ARGUMENT, "optimizer: parameter " + std::to_string(i) + " is missing");
    check_f32(params_[i], "optimizer", "every parameter");
    check(group_of_[i] >= 0, ERROR_ARGUMENT, "optimizer: negative group index");
    group_count_ = std::max(group_count_, static_cast<size_t>(group_of_[i]) + 1);
  }
}

void Optimizer::set_steps(int64_t n) {
  check(n >= 0, ERROR_ARGUMENT, "optimizer: the step count cannot be negative");
  steps_ = n;
}

Optimizer::State Optimizer::state(size_t i) const {
  check(!params_.empty(), ERROR_DISPOSED, "the optimizer has been disposed");
  check(i < state_.size(), ERROR_ARGUMENT, "optimizer: no parameter " + std::to_string(i));
  return state_[i];
}

void Optimizer::dispose() {
  params_.clear();
  state_.clear();
  group_of_.clear();
}

std::vector<Tensor> Optimizer::state_tensors() const {
  std::vector<Tensor> out;
  for (const State& s : state_)
    for (const Tensor& t : {s.a, s.b})
      if (t) out.push_back(t);
  return out;
}

void Optimizer::set_state(size_t i, const State& s) {
  check(!params_.empty(), ERROR_DISPOSED, "the optimizer has been disposed");
  check(i < state_.size(), ERROR_ARGUMENT, "optimizer: no parameter " + std::to_string(i));
  const Tensor& p = params_[i];
  const char* names[2] = {kind_ == OPTIMIZER_ADAMW ? "first moment" : "momentum buffer", "second moment"};
  const Tensor parts[2] = {s.a, s.b};
  State moved;
  Tensor* out[2] = {&moved.a, &moved.b};
  for (int k = 0; k < 2; k++) {
    if (!parts[k]) continue;
    check(parts[k]->dtype == DTYPE_F32 && parts[k]->shape == p->shape, ERROR_CHECKPOINT,
          std::string("optimizer state: the ") + names[k] + " of parameter " + std::to_string(i) + " has shape " +
              shape_str(parts[k]->shape) + " but the parameter has " + shape_str(p->shape));
    *out[k] = empty(p->shape, DTYPE_F32, p->device);
    copy_into(*out[k], parts[k]);
  }
  check(kind_ != OPTIMIZER_ADAMW || static_cast<bool>(moved.a) == static_cast<bool>(moved.b), ERROR_CHECKPOINT,
        "optimizer state: AdamW needs both moments of parameter " + std::to_string(i));
  check(s.step >= 0, ERROR_CHECKPOINT, "optimizer state: a negative step count");
  moved.step = s.step;
  state_[i] = moved;
}

void Optimizer::step(const std::vector<GroupOptions>& groups, const GradScale& scale) {
  check(!params_.empty(), ERROR_DISPOSED, "the optimizer has been disposed");
  check(groups.size() >= group_count_, ERROR_ARGUMENT,
        "optimizer: options for " + std::to_string(groups.size()) + " groups given, " + std::to_string(group_count_) +
            " needed");
  // Check everything first.
  std::vector<size_t> todo;
  for (size_t i = 0; i < params_.size(); i++) {
    const Tensor& p = params_[i];
    const Tensor& g = p->grad;
    if (!g) continue;
    check(g->shape == p->shape && g->dtype == DTYPE_F32, ERROR_SHAPE,
          "optimizer: the gradient of parameter " + std::to_string(i) + " has shape " + shape_str(g->shape) +
              " but the parameter " + shape_str(p->shape));
    check_same_device(p, g, "optimizer");
    check(p->is_contiguous(), ERROR_SHAPE, "optimizer: parameter " + std::to_string(i) + " is not contiguous");
    const GroupOptions& o = groups[group_of_[i]];
    check(std::isfinite(o.lr) && o.lr >= 0 && std::isfinite(o.weight_decay) && o.weight_decay >= 0, ERROR_ARGUMENT,
          "optimizer: group " + std::to_string(group_of_[i]) + " needs a finite, non-negative lr and weight decay");
    todo.push_back(i);
  }
  // New state buffers (allocations only: nothing that exists changes yet), on each parameter's
  // device; state restored or made on another device follows the parameter there.
  std::vector<State> next(state_);
  for (size_t i : todo) {
    const Tensor& p = params_[i];
    const GroupOptions& o = groups[group_of_[i]];
    State& s = next[i];
    const bool wants_b = kind_ == OPTIMIZER_ADAMW;
    const bool wants_a = kind_ == OPTIMIZER_ADAMW || o.momentum != 0.0;
    if (wants_a && (!s.a || s.a->device != p->device)) s.a = s.a ? to_device(s.a, p->device) : zeros(p->shape, DTYPE_F32, p->device);
    if (wants_b && (!s.b || s.b->device != p->device)) s.b = s.b ? to_device(s.b, p->device) : zeros(p->shape, DTYPE_F32, p->device);
  }
  if (scale.sumsq)  // the clipping factor is a scalar on one device
    for (size_t i : todo)
      check_same_device(params_[todo[0]], params_[i], "optimizer (gradient clipping)");
  // One multi-tensor update per device.
  for (Device dev : {DEVICE_CPU, DEVICE_CUDA}) {
    std::vector<AdamWTensor> adam;
    std::vector<SgdTensor> sgd;
    for (size_t i : todo) {
      const Tensor& p = params_[i];
      if (p->device != dev) continue;
      const GroupOptions& o = groups[group_of_[i]];
      const State& s = next[i];
      if (kind_ == OPTIMIZER_ADAMW) {
        // Bias corrections in double, as PyTorch computes them: 1 - beta2^t loses digits in float.
        const double t = static_cast<double>(s.step + 1);
        const double bc1 = 1.0 - std::pow(o.beta1, t), bc2 = 1.0 - std::pow(o.beta2, t);
        AdamWTensor a;
        a.param = p->ptr_f32(), a.grad = p->grad->ptr_f32(), a.m = s.a->ptr_f32(), a.v = s.b->ptr_f32();
        a.n = p->numel();
        a.beta1 = static_cast<float>(o.beta1), a.one_minus_beta1 = static_cast<float>(1.0 - o.beta1);
        a.beta2 = static_cast<float>(o.beta2), a.one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
        a.eps = static_cast<float>(o.eps);
        a.decay = static_cast<float>(1.0 - o.lr * o.weight_decay);
        a.step_size = static_cast<float>(o.lr / bc1);
        a.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
        adam.push_back(a);
      } else {
        sgd.push_back({p->ptr_f32(), p->grad->ptr_f32(), s.a ? s.a->ptr_f32() : nullptr, p->numel(),
                       static_cast<float>(o.lr), static_cast<float>(o.weight_decay), static_cast<float>(o.momentum),
                       static_cast<float>(o.dampening), o.nesterov, !state_[i].a});
      }
    }
    if (adam.empty() && sgd.empty()) continue;
    Backend& be = backend(dev);
    if (!adam.empty()) be.adamw(adam, scale);
    if (!sgd.empty()) be.sgd(sgd, scale);
  }
  for (size_t i : todo) {
    mark_written(params_[i]);
    next[i].step++;
  }
  if (scale.skip_non_finite) {
    prev_state_ = state_;
    prev_steps_ = steps_;
  }
  state_ = std::move(next);
  steps_++;
}

void Optimizer::settle(bool applied) {
  if (!applied && prev_steps_ >= 0) {  // the kernels skipped it: so do the counters
    state_ = std::move(prev_state_);
    steps_ = prev_steps_;
  }
  prev_state_.clear();
  prev_steps_ = -1;
}

}  // namespace duat
