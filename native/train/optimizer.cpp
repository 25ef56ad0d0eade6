// optimizer.cpp: the one optimizer path (optimizer.h).
#include "optimizer.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace duat {

namespace {

// The rows of p that optimizers update: [first, end) along dimension 0.
std::pair<int64_t, int64_t> update_rows(const Tensor& p) {
  const int64_t rows = p->dim() == 0 ? 1 : p->shape[0];
  const int64_t end = p->update_end < 0 ? rows : std::min(p->update_end, rows);
  return {std::clamp<int64_t>(p->update_begin, 0, end), end};
}

bool all_rows(const Tensor& p) {
  const auto [first, end] = update_rows(p);
  return first == 0 && end == (p->dim() == 0 ? 1 : p->shape[0]);
}

}  // namespace

void Optimizer::drop_frozen_gradients(const std::vector<Tensor>& params) {
  for (const Tensor& p : params) {
    if (!p->grad || all_rows(p)) continue;
    const auto [first, end] = update_rows(p);
    const int64_t rows = p->shape[0], row = p->numel() / std::max<int64_t>(rows, 1);
    for (const auto& [a, b] : {std::pair<int64_t, int64_t>{0, first}, {end, rows}})
      if (b > a) copy_into(make_view(p->grad, {(b - a) * row}, {1}, p->grad->offset + a * row),
                           zeros({(b - a) * row}, DTYPE_F32, p->device));
  }
}

Optimizer::Optimizer(OptimizerKind kind, std::vector<Tensor> params, std::vector<int> group_of)
    : kind_(kind), params_(std::move(params)), group_of_(std::move(group_of)), state_(params_.size()) {
  DUAT_CHECK(kind == OPTIMIZER_ADAMW || kind == OPTIMIZER_SGD, ERROR_ARGUMENT, "optimizer: unknown kind");
  DUAT_CHECK(!params_.empty() && group_of_.size() == params_.size(), ERROR_ARGUMENT,
             "optimizer: needs one group index per parameter");
  for (size_t i = 0; i < params_.size(); i++) {
    DUAT_CHECK(params_[i] != nullptr, ERROR_ARGUMENT, "optimizer: parameter " + std::to_string(i) + " is missing");
    check_f32(params_[i], "optimizer", "every parameter");
    DUAT_CHECK(group_of_[i] >= 0, ERROR_ARGUMENT, "optimizer: negative group index");
    group_count_ = std::max(group_count_, static_cast<size_t>(group_of_[i]) + 1);
  }
}

void Optimizer::set_steps(int64_t n) {
  DUAT_CHECK(n >= 0, ERROR_ARGUMENT, "optimizer: the step count cannot be negative");
  steps_ = n;
}

Optimizer::State Optimizer::state(size_t i) const {
  DUAT_CHECK(!params_.empty(), ERROR_DISPOSED, "the optimizer has been disposed");
  DUAT_CHECK(i < state_.size(), ERROR_ARGUMENT, "optimizer: no parameter " + std::to_string(i));
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
  DUAT_CHECK(!params_.empty(), ERROR_DISPOSED, "the optimizer has been disposed");
  DUAT_CHECK(i < state_.size(), ERROR_ARGUMENT, "optimizer: no parameter " + std::to_string(i));
  const Tensor& p = params_[i];
  const char* names[2] = {kind_ == OPTIMIZER_ADAMW ? "first moment" : "momentum buffer", "second moment"};
  const Tensor parts[2] = {s.a, s.b};
  State moved;
  Tensor* out[2] = {&moved.a, &moved.b};
  for (int k = 0; k < 2; k++) {
    if (!parts[k]) continue;
    DUAT_CHECK(parts[k]->dtype == DTYPE_F32 && parts[k]->shape == p->shape, ERROR_CHECKPOINT,
               std::string("optimizer state: the ") + names[k] + " of parameter " + std::to_string(i) + " has shape " +
                   shape_str(parts[k]->shape) + " but the parameter has " + shape_str(p->shape));
    *out[k] = empty(p->shape, DTYPE_F32, p->device);
    copy_into(*out[k], parts[k]);
  }
  DUAT_CHECK(kind_ != OPTIMIZER_ADAMW || static_cast<bool>(moved.a) == static_cast<bool>(moved.b), ERROR_CHECKPOINT,
             "optimizer state: AdamW needs both moments of parameter " + std::to_string(i));
  DUAT_CHECK(s.step >= 0, ERROR_CHECKPOINT, "optimizer state: a negative step count");
  DUAT_CHECK(s.row_steps.empty() || (p->dim() > 0 && static_cast<int64_t>(s.row_steps.size()) == p->shape[0]), ERROR_CHECKPOINT,
             "optimizer state: " + std::to_string(s.row_steps.size()) + " row step counts for parameter " + std::to_string(i) +
                 " of shape " + shape_str(p->shape));
  for (int64_t r : s.row_steps) DUAT_CHECK(r >= 0, ERROR_CHECKPOINT, "optimizer state: a negative row step count");
  moved.step = s.step;
  moved.row_steps = s.row_steps;
  state_[i] = moved;
}

void Optimizer::step(const std::vector<GroupOptions>& groups, const GradScale& scale) {
  DUAT_CHECK(!params_.empty(), ERROR_DISPOSED, "the optimizer has been disposed");
  DUAT_CHECK(groups.size() >= group_count_, ERROR_ARGUMENT,
             "optimizer: options for " + std::to_string(groups.size()) + " groups given, " + std::to_string(group_count_) +
                 " needed");
  // Check everything first.
  std::vector<size_t> todo;
  for (size_t i = 0; i < params_.size(); i++) {
    const Tensor& p = params_[i];
    const Tensor& g = p->grad;
    if (!g) continue;
    DUAT_CHECK(g->shape == p->shape && g->dtype == DTYPE_F32, ERROR_SHAPE,
               "optimizer: the gradient of parameter " + std::to_string(i) + " has shape " + shape_str(g->shape) +
                   " but the parameter " + shape_str(p->shape));
    check_same_device(p, g, "optimizer");
    DUAT_CHECK(p->is_contiguous(), ERROR_SHAPE, "optimizer: parameter " + std::to_string(i) + " is not contiguous");
    const auto [first, end] = update_rows(p);
    if (first >= end) continue;  // frozen whole
    const GroupOptions& o = groups[group_of_[i]];
    DUAT_CHECK(std::isfinite(o.lr) && o.lr >= 0 && std::isfinite(o.weight_decay) && o.weight_decay >= 0, ERROR_ARGUMENT,
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
  // One multi-tensor update per device. A parameter updated by rows gives one entry per run of
  // updated rows with the same update count.
  struct Run {
    size_t param;
    int64_t first, end, step;  // rows [first, end), each updated `step` times before
  };
  std::vector<Run> runs;
  for (size_t i : todo) {
    const Tensor& p = params_[i];
    State& s = next[i];
    if (all_rows(p) && s.row_steps.empty()) {
      runs.push_back({i, 0, -1, s.step});
      continue;
    }
    if (s.row_steps.empty()) s.row_steps.assign(static_cast<size_t>(p->shape[0]), s.step);
    const auto [first, end] = update_rows(p);
    for (int64_t r = first; r < end;) {
      int64_t e = r + 1;
      while (e < end && s.row_steps[e] == s.row_steps[r]) e++;
      runs.push_back({i, r, e, s.row_steps[r]});
      r = e;
    }
  }
  for (Device dev : {DEVICE_CPU, DEVICE_CUDA}) {
    std::vector<AdamWTensor> adam;
    std::vector<SgdTensor> sgd;
    for (const Run& run : runs) {
      const size_t i = run.param;
      const Tensor& p = params_[i];
      if (p->device != dev) continue;
      const GroupOptions& o = groups[group_of_[i]];
      const State& s = next[i];
      const int64_t row = run.end < 0 ? 0 : p->numel() / p->shape[0];
      const int64_t at = run.end < 0 ? 0 : run.first * row, n = run.end < 0 ? p->numel() : (run.end - run.first) * row;
      if (kind_ == OPTIMIZER_ADAMW) {
        // Bias corrections in double, as PyTorch computes them: 1 - beta2^t loses digits in float.
        const double t = static_cast<double>(run.step + 1);
        const double bc1 = 1.0 - std::pow(o.beta1, t), bc2 = 1.0 - std::pow(o.beta2, t);
        AdamWTensor a;
        a.param = p->ptr_f32() + at, a.grad = p->grad->ptr_f32() + at, a.m = s.a->ptr_f32() + at, a.v = s.b->ptr_f32() + at;
        a.n = n;
        a.beta1 = static_cast<float>(o.beta1), a.one_minus_beta1 = static_cast<float>(1.0 - o.beta1);
        a.beta2 = static_cast<float>(o.beta2), a.one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
        a.eps = static_cast<float>(o.eps);
        a.decay = static_cast<float>(1.0 - o.lr * o.weight_decay);
        a.step_size = static_cast<float>(o.lr / bc1);
        a.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
        adam.push_back(a);
      } else {
        // The buffer starts as the gradient on a row's first update (a whole parameter's: when
        // its buffer was made by this step).
        const bool first = run.end < 0 ? !state_[i].a : run.step == 0;
        sgd.push_back({p->ptr_f32() + at, p->grad->ptr_f32() + at, s.a ? s.a->ptr_f32() + at : nullptr, n,
                       static_cast<float>(o.lr), static_cast<float>(o.weight_decay), static_cast<float>(o.momentum),
                       static_cast<float>(o.dampening), o.nesterov, first});
      }
    }
    if (adam.empty() && sgd.empty()) continue;
    Backend& be = backend(dev);
    if (!adam.empty()) be.adamw(adam, scale);
    if (!sgd.empty()) be.sgd(sgd, scale);
  }
  for (const Run& run : runs)
    for (int64_t r = run.first; r < run.end; r++) next[run.param].row_steps[r]++;
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
