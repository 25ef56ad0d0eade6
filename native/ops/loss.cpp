// loss.cpp: cross-entropy with label smoothing, mean over the batch. Saves log-probabilities;
// backward ACCUMULATES dlogits += dloss / B * (softmax - q).
#include <cmath>
#include <string>

#include "../cpu/kernels.h"
#include "../cpu/math.h"
#include "ops.h"

namespace duat {

Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float smoothing) {
  check_f32(logits, "crossEntropy", "logits");
  check_i32(labels, "crossEntropy", "labels");
  check_same_device(logits, labels, "crossEntropy");
  check_dim(logits, 2, "crossEntropy", "logits (B, classes)");
  const int64_t B = logits->shape[0], K = logits->shape[1];
  check(labels->dim() == 1 && labels->shape[0] == B, ERROR_SHAPE,
        "crossEntropy: labels shape " + shape_str(labels->shape) + " does not match a batch of " + std::to_string(B));
  check(B > 0 && K > 0, ERROR_SHAPE, "crossEntropy: empty logits " + shape_str(logits->shape));
  check(smoothing >= 0.0f && smoothing < 1.0f, ERROR_ARGUMENT,
        "crossEntropy: label smoothing must be in [0, 1), got " + std::to_string(smoothing));
  const Tensor lc = contiguous_data(logits), yc = contiguous_data(labels);
  const int32_t* y = yc->i32();
  for (int64_t i = 0; i < B; i++) {
    check(y[i] >= 0 && y[i] < K, ERROR_ARGUMENT,
          "crossEntropy: label " + std::to_string(y[i]) + " at index " + std::to_string(i) + " is outside [0, " +
              std::to_string(K) + ")");
  }
  Tensor logp = empty({B, K});
  log_softmax_forward_cpu(lc->f32(), logp->f32(), B, K);
  const float* lp = logp->f32();
  const float off = smoothing / static_cast<float>(K), on = 1.0f - smoothing + off;
  double total = 0.0;
  for (int64_t i = 0; i < B; i++) {
    double row = 0.0;
    if (smoothing > 0.0f)
      for (int64_t k = 0; k < K; k++) row += lp[i * K + k];
    total -= off * row + (on - off) * lp[i * K + y[i]];
  }
  Tensor out = full({}, static_cast<float>(total / static_cast<double>(B)));
  if (!any_requires_grad({logits})) return out;
  Tensor sy = yc;
  return record(out, "cross_entropy", {logits, labels}, [=](const Tensor& dout, Grads& g) {
    const float scale = dout->f32()[0] / static_cast<float>(B);
    const int32_t* y = sy->i32();
    const float* lp = logp->f32();
    float* dl = g.f32(0);
    for (int64_t i = 0; i < B; i++) {
      for (int64_t k = 0; k < K; k++) dl[i * K + k] += scale * (fast_exp(lp[i * K + k]) - off);
      dl[i * K + y[i]] -= scale * (on - off);
    }
  });
}

}  // namespace duat
