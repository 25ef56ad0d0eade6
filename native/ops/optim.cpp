// optim.cpp: in-place optimiser updates (no autograd). AdamW with decoupled weight decay and
// bias correction; SGD with momentum, dampening and Nesterov, as in PyTorch.
#include <cmath>
#include <string>

#include "../core/parallel.h"
#include "ops.h"

namespace duat {

namespace {
void check_same_shape(const Tensor& a, const Tensor& b, const char* op, const char* what) {
  check_f32(b, op, what);
  check(a->shape == b->shape && b->is_contiguous(), ERROR_SHAPE,
        std::string(op) + ": " + what + " shape " + shape_str(b->shape) + " does not match the parameter " +
            shape_str(a->shape));
}
}  // namespace

void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step) {
  check_f32(param, "adamw", "the parameter");
  check(param->is_contiguous(), ERROR_SHAPE, "adamw: the parameter must be contiguous");
  mark_written(param);
  check_same_shape(param, grad, "adamw", "the gradient");
  check_same_shape(param, m, "adamw", "the first moment");
  check_same_shape(param, v, "adamw", "the second moment");
  check(step >= 1, ERROR_ARGUMENT, "adamw: step must be at least 1");
  float* p = param->f32();
  const float* g = grad->f32();
  float* pm = m->f32();
  float* pv = v->f32();
  const float bc1 = 1.0f - std::pow(beta1, static_cast<float>(step));
  const float bc2 = 1.0f - std::pow(beta2, static_cast<float>(step));
  const float step_size = lr / bc1, inv_sqrt_bc2 = 1.0f / std::sqrt(bc2), decay = 1.0f - lr * weight_decay;
  parallel_for_range(param->numel(), 1 << 15, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      pm[i] = beta1 * pm[i] + (1.0f - beta1) * g[i];
      pv[i] = beta2 * pv[i] + (1.0f - beta2) * g[i] * g[i];
      p[i] = p[i] * decay - step_size * pm[i] / (std::sqrt(pv[i]) * inv_sqrt_bc2 + eps);
    }
  });
}

void sgd_update(const Tensor& param, const Tensor& grad, const Tensor& buf, float lr, float momentum,
                float dampening, float weight_decay, bool nesterov, bool first_step) {
  check_f32(param, "sgd", "the parameter");
  check(param->is_contiguous(), ERROR_SHAPE, "sgd: the parameter must be contiguous");
  mark_written(param);
  check_same_shape(param, grad, "sgd", "the gradient");
  if (momentum != 0.0f) check_same_shape(param, buf, "sgd", "the momentum buffer");
  float* p = param->f32();
  const float* g = grad->f32();
  float* b = momentum != 0.0f ? buf->f32() : nullptr;
  parallel_for_range(param->numel(), 1 << 15, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      float d = g[i] + weight_decay * p[i];
      if (b) {
        b[i] = first_step ? d : momentum * b[i] + (1.0f - dampening) * d;
        d = nesterov ? d + momentum * b[i] : b[i];
      }
      p[i] -= lr * d;
    }
  });
}

double sum_of_squares(const Tensor& t) {
  check_f32(t, "sumOfSquares", "the tensor");
  const Tensor c = contiguous_data(t);
  const float* p = c->f32();
  double s = 0.0;
  for (int64_t i = 0, n = c->numel(); i < n; i++) s += static_cast<double>(p[i]) * p[i];
  return s;
}

void scale_inplace(const Tensor& t, float s) {
  check_f32(t, "scale", "the tensor");
  check(t->is_contiguous(), ERROR_SHAPE, "scale: the tensor must be contiguous");
  mark_written(t);
  float* p = t->f32();
  for (int64_t i = 0, n = t->numel(); i < n; i++) p[i] *= s;
}

}  // namespace duat
