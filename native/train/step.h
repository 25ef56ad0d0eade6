// step.h: the training step and the evaluation of a batch, one definition for every device
// (docs/design.md, "Training"). The work runs on the device of the model's parameters; a step
// reads back from the device once (loss, correct count and gradient norm together).
#pragma once
#include <vector>

#include "../model/model.h"
#include "optimizer.h"

namespace duat {

struct StepOptions {
  float label_smoothing = 0.0f;  // in [0, 1)
  float clip_grad_norm = 0.0f;   // 0: off
  // Data-parallel training (docs/design.md, "Distributed training"): this rank's batch is its
  // shard of a global batch; after backward every gradient, the loss and the correct count are
  // summed over the ranks in one bucketed allreduce, weighted by shard size, so every rank sees
  // the gradient of the mean loss over the whole batch and applies the same update.
  bool data_parallel = false;
};

struct StepResult {
  double loss = 0.0;
  double grad_norm = 0.0;  // before clipping
  int64_t correct = 0;
  bool skipped = false;  // the loss or the gradient norm was not finite: no update was applied
};

// Forward, cross-entropy, backward, gradient norm, clipping and, with an optimizer, its update
// (then the gradients are dropped); without one the gradients stay in each parameter's grad.
// When the loss or the gradient norm is not finite the update is skipped on the device and the
// result says so. In a branch-parallel model (ModelConfig::branch_parallel) the gradient norm is
// the whole model's. A distributed step is a collective: every rank calls it. images (B, channels, S, S) and labels (B) int32 may live on any device. A step
// that throws leaves parameters, optimizer state and counters as they were.
StepResult train_step(Model& model, const Tensor& images, const Tensor& labels, Optimizer* opt,
                      const std::vector<GroupOptions>& groups, const StepOptions& o);

struct EvalResult {
  double loss_sum = 0.0;  // when labels were given
  int64_t correct = 0;
  Tensor predictions;    // int32 (B), on the CPU
  Tensor probabilities;  // (B, classes) softmax of the logits, on the CPU, when asked for
};
EvalResult evaluate(Model& model, const Tensor& images, const Tensor& labels, bool probabilities = false);

}  // namespace duat
