// activation.cpp: GELU (erf form), softmax and log-softmax over any dimension, dropout.
// Backward ACCUMULATES into the input gradient.
#include <string>

#include "ops.h"

namespace duat {

namespace {

// Softmax-like ops run over the last dimension; another dim is moved there and back (views).
template <typename F>
Tensor along_dim(const Tensor& x, int64_t dim, const char* op, F last_dim_op) {
  check_f32(x, op, "the tensor");
  DUAT_CHECK(x->dim() >= 1, ERROR_SHAPE, std::string(op) + ": needs at least one dimension");
  const int64_t d = wrap_dim(dim, x->dim(), op);
  if (d == x->dim() - 1) return last_dim_op(x);
  return transpose(last_dim_op(contiguous(transpose(x, d, -1))), d, -1);
}

Tensor softmax_last(const Tensor& x, bool log) {
  const Tensor xc = contiguous_data(x);
  const int64_t cols = x->size(-1), rows = cols ? x->numel() / cols : 0;
  Tensor out = empty(x->shape, DTYPE_F32, x->device);
  if (rows) backend(x->device).softmax_forward(xc->ptr_f32(), out->ptr_f32(), rows, cols, log);
  Tensor sy = detach(out);
  return record(out, log ? "log_softmax" : "softmax", {x}, [sy, rows, cols, log](const Tensor& dout, Grads& g) {
    const Tensor dx = g.contiguous_slot(0);
    if (rows) backend(sy->device).softmax_backward(sy->ptr_f32(), dout->ptr_f32(), dx->ptr_f32(), rows, cols, log);
  });
}

}  // namespace

Tensor gelu(const Tensor& x) {
  check_f32(x, "gelu", "the tensor");
  Tensor out = empty(x->shape, DTYPE_F32, x->device);
  launch_map(MAP_GELU, out, x, nullptr);
  if (!any_requires_grad({x})) return out;
  Tensor sx = detach(x);
  return record(out, "gelu", {x}, [sx](const Tensor& dout, Grads& g) {
    g.into(0, [&](const Tensor& slot, bool acc) { launch_map(MAP_GELU_GRAD, slot, sx, dout, 0.0f, acc); });
  });
}

Tensor softmax(const Tensor& x, int64_t dim) {
  return along_dim(x, dim, "softmax", [](const Tensor& x) { return softmax_last(x, false); });
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  return along_dim(x, dim, "logSoftmax", [](const Tensor& x) { return softmax_last(x, true); });
}

Tensor dropout(const Tensor& x, float p, uint64_t seed) {
  check_f32(x, "dropout", "the tensor");
  DUAT_CHECK(p >= 0.0f && p < 1.0f, ERROR_ARGUMENT, "dropout: p must be in [0, 1), got " + std::to_string(p));
  if (p == 0.0f) return x;
  const Tensor xc = contiguous_data(x);
  const int64_t n = xc->numel();
  Tensor out = empty(x->shape, DTYPE_F32, x->device);
  backend(x->device).dropout(xc->ptr_f32(), out->ptr_f32(), n, p, seed, false);
  return record(out, "dropout", {x}, [=](const Tensor& dout, Grads& g) {
    bool fresh = false;
    const Tensor dx = g.contiguous_slot_for_write(0, &fresh);
    backend(dout->device).dropout(dout->ptr_f32(), dx->ptr_f32(), n, p, seed, !fresh);
  });
}

}  // namespace duat
