// reduce.cpp: sum and mean over dimensions (the device's reduction kernel; fp64 accumulation on
// the CPU), argmax. Backward broadcasts the output gradient back over the reduced dims and
// ACCUMULATES.
#include <string>

#include "ops.h"

namespace duat {

namespace {

// The reduced dims as a mask, validated.
std::vector<bool> reduce_mask(const Tensor& x, const std::vector<int64_t>& dims, const char* op) {
  std::vector<bool> mask(x->dim(), dims.empty());
  for (int64_t d : dims) {
    const int64_t w = wrap_dim(d, x->dim(), op);
    DUAT_CHECK(!mask[w], ERROR_SHAPE, std::string(op) + ": dimension " + std::to_string(d) + " is listed twice");
    mask[w] = true;
  }
  return mask;
}

Tensor reduce_sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim, bool average, const char* op) {
  check_f32(x, op, "the tensor");
  const std::vector<bool> mask = reduce_mask(x, dims, op);
  Shape keep = x->shape, out_shape;
  int64_t count = 1;
  for (int64_t d = 0; d < x->dim(); d++) {
    if (mask[d]) {
      count *= x->shape[d];
      keep[d] = 1;
    }
    if (!mask[d] || keepdim) out_shape.push_back(keep[d]);
  }
  if (average) DUAT_CHECK(count > 0, ERROR_SHAPE, std::string(op) + ": mean over an empty dimension");
  const float scale = average ? 1.0f / static_cast<float>(count) : 1.0f;
  Tensor out = empty(out_shape, DTYPE_F32, x->device);
  launch_reduce(make_view(out, keep, contiguous_strides(keep), 0), x, scale);
  const Shape in_shape = x->shape;
  return record(out, op, {x}, [keep, in_shape, scale](const Tensor& dout, Grads& g) {
    // dout read as `keep`, broadcast over the reduced dims.
    const Tensor dk = make_view(dout, keep, contiguous_strides(keep), dout->offset);
    g.into(0, [&](const Tensor& slot, bool acc) { launch_map(MAP_MUL_SCALAR, slot, dk, nullptr, scale, acc); });
  });
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return reduce_sum(x, dims, keepdim, false, "sum");
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return reduce_sum(x, dims, keepdim, true, "mean");
}

Tensor argmax(const Tensor& x) {
  check_f32(x, "argmax", "the tensor");
  DUAT_CHECK(x->dim() >= 1 && x->size(-1) > 0, ERROR_SHAPE, "argmax: needs a non-empty last dimension, got " + shape_str(x->shape));
  const Tensor c = contiguous_data(x);
  const int64_t cols = c->size(-1), rows = c->numel() / cols;
  Tensor out = empty(Shape(x->shape.begin(), x->shape.end() - 1), DTYPE_I32, x->device);
  if (rows) backend(x->device).argmax_rows(c->ptr_f32(), out->ptr_i32(), rows, cols);
  return out;
}

}  // namespace duat
