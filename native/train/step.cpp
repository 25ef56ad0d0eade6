// step.cpp: the training step and the evaluation of a batch (step.h).
#include "step.h"

#include <cmath>
#include <string>

#include "../core/autograd.h"
#include "../distributed/comm.h"
#include "../ops/ops.h"

namespace duat {

namespace {

// Labels are checked where they are, before they move to the model's device.
void check_batch(const Model& m, const Tensor& images, const Tensor& labels, const char* op) {
  check_f32(images, op, "images");
  if (!labels) return;
  check_class_labels(labels, m.config().classes, op);
  DUAT_CHECK(images->dim() >= 1 && labels->shape[0] == images->shape[0], ERROR_SHAPE,
             std::string(op) + ": " + std::to_string(labels->numel()) + " labels for images of shape " +
                 shape_str(images->shape));
}

// Scalars on one device, read back to the host together.
std::vector<float> read_back(const std::vector<Tensor>& scalars) {
  const Device dev = scalars[0]->device;
  const int64_t n = static_cast<int64_t>(scalars.size());
  Tensor packed = empty({n}, DTYPE_F32, dev);
  for (int64_t i = 0; i < n; i++) copy_into(make_view(packed, {1}, {1}, i), reshape(scalars[i], {1}));
  const Tensor host = to_device(packed, DEVICE_CPU);
  return std::vector<float>(host->f32(), host->f32() + n);
}

// Data parallel: one bucket holding every gradient, the loss and the correct count, each rank's
// share weighted by its part of the global batch, summed over the ranks; the gradients are
// written back and {loss, correct} returned as device scalars.
std::vector<Tensor> allreduce_data_parallel(Communicator& comm, const std::vector<Tensor>& grads, const Tensor& loss,
                                            const Tensor& correct, int64_t batch) {
  double sizes[1] = {static_cast<double>(batch)};
  comm.allreduce_sum(sizes, 1);
  const float w = static_cast<float>(static_cast<double>(batch) / sizes[0]);
  int64_t total = 0;
  for (const Tensor& g : grads) total += g->numel();
  const Device dev = loss->device;
  const Tensor flat = empty({total + 2}, DTYPE_F32, dev);
  auto piece = [&](int64_t at, const Tensor& like) { return make_view(flat, like->shape, contiguous_strides(like->shape), at); };
  int64_t at = 0;
  for (const Tensor& g : grads) {
    copy_into(piece(at, g), g);
    at += g->numel();
  }
  copy_into(make_view(flat, {1}, {1}, total), reshape(loss, {1}));
  scale_inplace(flat, w);  // the correct count is copied after: it is summed unweighted
  copy_into(make_view(flat, {1}, {1}, total + 1), reshape(correct, {1}));
  allreduce_sum(comm, flat);
  at = 0;
  for (const Tensor& g : grads) {
    copy_into(g, piece(at, g));
    at += g->numel();
  }
  return {make_view(flat, {}, {}, total), make_view(flat, {}, {}, total + 1)};
}

}  // namespace

StepResult train_step(Model& model, const Tensor& images, const Tensor& labels, Optimizer* opt,
                      const std::vector<GroupOptions>& groups, const StepOptions& o) {
  check_batch(model, images, labels, "trainStep");
  DUAT_CHECK(o.label_smoothing >= 0.0f && o.label_smoothing < 1.0f && o.clip_grad_norm >= 0.0f, ERROR_ARGUMENT,
             "trainStep: label smoothing must be in [0, 1) and the clipping norm non-negative");
  GradMode with_grad(true);  // whatever an earlier job on this pool thread left behind
  PrecisionScope precision(model.precision());
  const Device dev = model.device();
  const bool branches = model.config().branch_parallel;
  Communicator* comm = o.data_parallel || branches ? &require_communicator("a distributed training step") : nullptr;
  DUAT_CHECK(!(o.data_parallel && branches), ERROR_ARGUMENT,
             "trainStep: a branch-parallel model cannot also be trained data-parallel");
  for (const Tensor& t : model.params()) t->grad = nullptr;
  Tensor loss, correct;
  if (o.data_parallel && images->shape[0] == 0) {
    // A shard with no rows (a last batch smaller than the job): it adds nothing, but joins the sum.
    DUAT_CHECK(images->dim() == 4, ERROR_SHAPE, "trainStep: expected images of shape [0, channels, size, size] for an empty shard");
    for (const Tensor& t : model.params()) t->grad = zeros_like(t);
    loss = zeros({}, DTYPE_F32, dev);
    correct = zeros({}, DTYPE_F32, dev);
  } else {
    const Tensor logits = model_forward(images, model.structured(), model.config());
    const Tensor y = to_device(labels, dev);
    loss = cross_entropy(logits, y, o.label_smoothing);
    correct = count_correct(logits, y);
    backward(loss, nullptr);
  }
  Optimizer::drop_frozen_gradients(model.params());
  std::vector<Tensor> grads;
  for (const Tensor& t : model.params())
    if (t->grad) grads.push_back(t->grad);
  if (o.data_parallel) {
    const std::vector<Tensor> summed = allreduce_data_parallel(*comm, grads, loss, correct, images->shape[0]);
    loss = summed[0];
    correct = summed[1];
  }
  Tensor sumsq;
  if (branches) {
    // The shared parameters' gradients are equal on every rank; each rank's branches are its own.
    const std::vector<Tensor>& params = model.params();
    const IndexRange stages = model_branch_params(model.config());
    std::vector<Tensor> shared_grads, own_grads;
    for (size_t i = 0; i < params.size(); i++)
      if (params[i]->grad) (stages.contains(i) ? own_grads : shared_grads).push_back(params[i]->grad);
    Tensor own = own_grads.empty() ? zeros({}, DTYPE_F32, dev) : sum_of_squares(own_grads);
    allreduce_sum(*comm, own);
    sumsq = shared_grads.empty() ? own : add(sum_of_squares(shared_grads), own);
  } else {
    sumsq = grads.empty() ? zeros({}, DTYPE_F32, dev) : sum_of_squares(grads);
  }
  // The update's gate: the squared norm, made NaN by a non-finite loss too (inf * 0 is NaN).
  Tensor gate;
  {
    GradMode no_grad(false);
    gate = add(sumsq, mul_scalar(loss, 0.0f));
  }
  if (opt) {
    // Clipping and the non-finite skip read the gate on the device: the update never waits for
    // the host.
    opt->step(groups, GradScale{gate->ptr_f32(), o.clip_grad_norm, true});
  }
  const std::vector<float> stats = read_back({loss, correct, sumsq, gate});
  StepResult r;
  r.loss = stats[0];
  r.correct = static_cast<int64_t>(stats[1]);
  r.grad_norm = std::sqrt(static_cast<double>(stats[2]));
  r.skipped = !dm::is_finite(stats[3]);
  if (opt) {
    opt->settle(!r.skipped);
    for (const Tensor& t : model.params()) t->grad = nullptr;
  } else if (!r.skipped && o.clip_grad_norm > 0.0f && r.grad_norm > o.clip_grad_norm) {
    const float s = dm::clip_factor(stats[2], o.clip_grad_norm);
    for (const Tensor& g : grads) scale_inplace(g, s);
  }
  return r;
}

EvalResult evaluate(Model& model, const Tensor& images, const Tensor& labels, bool probabilities) {
  check_batch(model, images, labels, "evaluate");
  GradMode no_grad(false);
  PrecisionScope precision(model.precision());
  const Tensor logits = model_forward(images, model.structured(), model.config());
  EvalResult r;
  r.predictions = to_device(argmax(logits), DEVICE_CPU);
  if (probabilities) r.probabilities = contiguous_data(to_device(softmax(logits, 1), DEVICE_CPU));
  if (labels) {
    const Tensor y = to_device(labels, model.device());
    const std::vector<float> stats = read_back({cross_entropy(logits, y, 0.0f), count_correct(logits, y)});
    r.loss_sum = static_cast<double>(stats[0]) * static_cast<double>(logits->shape[0]);
    r.correct = static_cast<int64_t>(stats[1]);
  }
  return r;
}

}  // namespace duat
