// loss.cpp: cross-entropy with label smoothing, mean over the batch, and the count of correct
// predictions. The forward kernel writes dlogits (for a loss gradient of 1) beside the loss;
// backward ACCUMULATES dlogits * dloss.
#include <string>

#include "ops.h"

namespace duat {

void check_class_labels(const Tensor& labels, int64_t classes, const char* op) {
  check_i32(labels, op, "labels");
  check_dim(labels, 1, op, "labels");
  if (labels->device != DEVICE_CPU) return;
  const Tensor y = contiguous_data(labels);
  for (int64_t i = 0; i < y->numel(); i++) {
    DUAT_CHECK(y->i32()[i] >= 0 && y->i32()[i] < classes, ERROR_ARGUMENT,
               std::string(op) + ": label " + std::to_string(y->i32()[i]) + " at index " + std::to_string(i) +
                   " is outside [0, " + std::to_string(classes) + ")");
  }
}

namespace {
void check_labels(const Tensor& logits, const Tensor& labels, const char* op) {
  check_f32(logits, op, "logits");
  check_same_device(logits, labels, op);
  check_dim(logits, 2, op, "logits (B, classes)");
  const int64_t B = logits->shape[0], K = logits->shape[1];
  DUAT_CHECK(B > 0 && K > 0, ERROR_SHAPE, std::string(op) + ": empty logits " + shape_str(logits->shape));
  DUAT_CHECK(labels->dim() == 1 && labels->shape[0] == B, ERROR_SHAPE,
             std::string(op) + ": labels shape " + shape_str(labels->shape) + " does not match a batch of " +
                 std::to_string(B));
  check_class_labels(labels, K, op);
}
}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float smoothing) {
  check_labels(logits, labels, "crossEntropy");
  DUAT_CHECK(smoothing >= 0.0f && smoothing < 1.0f, ERROR_ARGUMENT,
             "crossEntropy: label smoothing must be in [0, 1), got " + std::to_string(smoothing));
  const int64_t B = logits->shape[0], K = logits->shape[1];
  const Device dev = logits->device;
  const Tensor lc = contiguous_data(logits), yc = contiguous_data(labels);
  Tensor out = empty({}, DTYPE_F32, dev);
  const bool grad = any_requires_grad({logits});
  const Tensor dlogits = grad ? empty({B, K}, DTYPE_F32, dev) : nullptr;
  backend(dev).cross_entropy(lc->ptr_f32(), yc->ptr_i32(), out->ptr_f32(), grad ? dlogits->ptr_f32() : nullptr, B, K,
                             smoothing);
  if (!grad) return out;
  return record(out, "cross_entropy", {logits, labels}, [dlogits](const Tensor& dout, Grads& g) {
    g.into(0, [&](const Tensor& slot, bool acc) { launch_map(MAP_MUL, slot, dlogits, dout, 0.0f, acc); });
  });
}

Tensor count_correct(const Tensor& logits, const Tensor& labels) {
  check_labels(logits, labels, "countCorrect");
  const Tensor lc = contiguous_data(logits), yc = contiguous_data(labels);
  Tensor out = empty({}, DTYPE_F32, logits->device);
  backend(logits->device).count_correct(lc->ptr_f32(), yc->ptr_i32(), out->ptr_f32(), logits->shape[0], logits->shape[1]);
  return out;
}

}  // namespace duat
