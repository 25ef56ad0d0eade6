// activation.cpp: GELU (erf form), softmax and log-softmax over any dimension, dropout.
// Backward ACCUMULATES into the input gradient.
#include <string>

#include "../cpu/kernels.h"
#include "ops.h"

namespace duat {

namespace {

// Softmax-like ops run over the last dimension; another dim is moved there and back (views).
template <typename F>
Tensor along_dim(const Tensor& x, int64_t dim, const char* op, F last_dim_op) {
  check_f32(x, op, "the tensor");
  check(x->dim() >= 1, ERROR_SHAPE, std::string(op) + ": needs at least one dimension");
  const int64_t d = wrap_dim(dim, x->dim(), op);
  if (d == x->dim() - 1) return last_dim_op(x);
  return transpose(last_dim_op(contiguous(transpose(x, d, -1))), d, -1);
}

}  // namespace

Tensor gelu(const Tensor& x) {
  check_f32(x, "gelu", "the tensor");
  const Tensor xc = contiguous_data(x);
  Tensor out = empty(x->shape);
  gelu_forward_cpu(xc->f32(), out->f32(), xc->numel());
  if (!any_requires_grad({x})) return out;
  Tensor sx = detach(xc);
  return record(out, "gelu", {x}, [sx](const Tensor& dout, Grads& g) {
    gelu_backward_cpu(sx->f32(), dout->f32(), g.f32(0), sx->numel());
  });
}

Tensor softmax(const Tensor& x, int64_t dim) {
  return along_dim(x, dim, "softmax", [](const Tensor& x) {
    const Tensor xc = contiguous_data(x);
    const int64_t cols = x->size(-1), rows = cols ? x->numel() / cols : 0;
    Tensor out = empty(x->shape);
    softmax_forward_cpu(xc->f32(), out->f32(), rows, cols);
    Tensor sy = detach(out);
    return record(out, "softmax", {x}, [sy, rows, cols](const Tensor& dout, Grads& g) {
      softmax_backward_cpu(sy->f32(), dout->f32(), g.f32(0), rows, cols);
    });
  });
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  return along_dim(x, dim, "logSoftmax", [](const Tensor& x) {
    const Tensor xc = contiguous_data(x);
    const int64_t cols = x->size(-1), rows = cols ? x->numel() / cols : 0;
    Tensor out = empty(x->shape);
    log_softmax_forward_cpu(xc->f32(), out->f32(), rows, cols);
    Tensor sy = detach(out);
    return record(out, "log_softmax", {x}, [sy, rows, cols](const Tensor& dout, Grads& g) {
      log_softmax_backward_cpu(sy->f32(), dout->f32(), g.f32(0), rows, cols);
    });
  });
}

Tensor dropout(const Tensor& x, float p, uint64_t seed) {
  check_f32(x, "dropout", "the tensor");
  check(p >= 0.0f && p < 1.0f, ERROR_ARGUMENT, "dropout: p must be in [0, 1), got " + std::to_string(p));
  if (p == 0.0f) return x;
  const Tensor xc = contiguous_data(x);
  const float keep_scale = 1.0f / (1.0f - p);
  const int64_t n = xc->numel();
  Tensor out = empty(x->shape);
  const float* px = xc->f32();
  float* po = out->f32();
  for (int64_t i = 0; i < n; i++) po[i] = uniform_at(seed, i, 0) < p ? 0.0f : px[i] * keep_scale;
  return record(out, "dropout", {x}, [=](const Tensor& dout, Grads& g) {
    float* dx = g.f32(0);
    const float* pd = dout->f32();
    for (int64_t i = 0; i < n; i++)
      if (uniform_at(seed, i, 0) >= p) dx[i] += pd[i] * keep_scale;
  });
}

}  // namespace duat
