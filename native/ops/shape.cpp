// shape.cpp: reshape, permute, transpose, slice (views that share storage where the layout
// allows), concat, contiguous and to (copies). Backward ACCUMULATES the gradient into the
// matching region of each input; gradients of views are handed through without copies where
// the layouts allow (Grads::pass).
#include <string>

#include "ops.h"

namespace duat {

namespace {

Tensor as_view(const Tensor& x, const Shape& shape, const Shape& strides, int64_t offset) {
  Tensor v = make_view(x, shape, strides, offset);
  return v;
}

}  // namespace

Tensor contiguous(const Tensor& x) {
  if (x->is_contiguous()) return x;
  Tensor out = contiguous_data(x);
  return record(out, "contiguous", {x}, [](const Tensor& dout, Grads& g) { g.pass(0, dout); });
}

Tensor to(const Tensor& x, Device device) {
  if (x->device == device) return x;
  Tensor out = to_device(x, device);
  const Device from = x->device;
  return record(out, "to", {x}, [from](const Tensor& dout, Grads& g) { g.pass(0, to_device(dout, from)); });
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  Shape s = shape, given;
  int64_t infer = -1;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == -1) {
      DUAT_CHECK(infer < 0, ERROR_SHAPE, "reshape: only one dimension can be -1 in " + shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      DUAT_CHECK(s[i] >= 0, ERROR_SHAPE, "reshape: invalid dimension in " + shape_str(shape));
      given.push_back(s[i]);
    }
  }
  const int64_t known = shape_numel(given);  // checked: refuses a product beyond 2^40
  if (infer >= 0) {
    DUAT_CHECK(known > 0 && x->numel() % known == 0, ERROR_SHAPE,
               "reshape: cannot infer the -1 in " + shape_str(shape) + " for " + std::to_string(x->numel()) + " elements");
    s[infer] = x->numel() / known;
  }
  DUAT_CHECK(shape_numel(s) == x->numel(), ERROR_SHAPE,
             "reshape: cannot reshape " + shape_str(x->shape) + " (" + std::to_string(x->numel()) + " elements) to " +
                 shape_str(shape));
  const Tensor c = contiguous_data(x);
  Tensor out = as_view(c, s, contiguous_strides(s), c->offset);
  const Shape in_shape = x->shape;
  return record(out, "reshape", {x}, [in_shape](const Tensor& dout, Grads& g) {
    const Tensor d = contiguous_data(dout);
    g.pass(0, make_view(d, in_shape, contiguous_strides(in_shape), d->offset));
  });
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& perm) {
  const int64_t nd = x->dim();
  DUAT_CHECK(static_cast<int64_t>(perm.size()) == nd, ERROR_SHAPE,
             "permute: " + std::to_string(perm.size()) + " dimensions given for a tensor of shape " + shape_str(x->shape));
  std::vector<int64_t> p(nd), inverse(nd, -1);
  for (int64_t i = 0; i < nd; i++) {
    p[i] = wrap_dim(perm[i], nd, "permute");
    DUAT_CHECK(inverse[p[i]] < 0, ERROR_SHAPE, "permute: dimension " + std::to_string(perm[i]) + " appears twice");
    inverse[p[i]] = i;
  }
  Shape shape(nd), strides(nd);
  for (int64_t i = 0; i < nd; i++) {
    shape[i] = x->shape[p[i]];
    strides[i] = x->strides[p[i]];
  }
  Tensor out = as_view(x, shape, strides, x->offset);
  return record(out, "permute", {x}, [inverse](const Tensor& dout, Grads& g) {
    Shape shape(inverse.size()), strides(inverse.size());
    for (size_t i = 0; i < inverse.size(); i++) {
      shape[i] = dout->shape[inverse[i]];
      strides[i] = dout->strides[inverse[i]];
    }
    g.pass(0, make_view(dout, shape, strides, dout->offset));
  });
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  const int64_t nd = x->dim();
  std::vector<int64_t> perm(nd);
  for (int64_t i = 0; i < nd; i++) perm[i] = i;
  std::swap(perm[wrap_dim(d0, nd, "transpose")], perm[wrap_dim(d1, nd, "transpose")]);
  return permute(x, perm);
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  const int64_t d = wrap_dim(dim, x->dim(), "slice");
  const int64_t n = x->shape[d];
  DUAT_CHECK(step >= 1, ERROR_SHAPE, "slice: step must be at least 1, got " + std::to_string(step));
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  // A step beyond the dimension takes at most one element, as n does: clamping it keeps the
  // arithmetic below (and the view's stride) within the tensor's own bounds.
  step = std::min(step, std::max<int64_t>(n, 1));
  const int64_t len = (end - start + step - 1) / step;
  Shape shape = x->shape, strides = x->strides;
  shape[d] = len;
  strides[d] *= step;
  Tensor out = as_view(x, shape, strides, x->offset + start * x->strides[d]);
  const Shape in_shape = x->shape;
  return record(out, "slice", {x}, [=](const Tensor& dout, Grads& g) {
    Tensor& slot = g.slot(0);
    Shape ss = slot->strides;
    ss[d] *= step;
    add_into(make_view(slot, dout->shape, ss, slot->offset + start * slot->strides[d]), dout);
  });
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  DUAT_CHECK(!xs.empty(), ERROR_SHAPE, "concat: needs at least one tensor");
  const Tensor& first = xs[0];
  const int64_t d = wrap_dim(dim, first->dim(), "concat");
  Shape shape = first->shape;
  shape[d] = 0;
  for (size_t i = 0; i < xs.size(); i++) {
    DUAT_CHECK(xs[i]->dtype == first->dtype, ERROR_DTYPE, "concat: tensor " + std::to_string(i) + " has a different dtype");
    check_same_device(first, xs[i], "concat");
    bool fits = xs[i]->dim() == first->dim();
    for (int64_t k = 0; fits && k < first->dim(); k++) fits = k == d || xs[i]->shape[k] == first->shape[k];
    DUAT_CHECK(fits, ERROR_SHAPE,
               "concat: tensor " + std::to_string(i) + " has shape " + shape_str(xs[i]->shape) +
                   ", which does not match " + shape_str(first->shape) + " outside dimension " + std::to_string(d));
    shape[d] += xs[i]->shape[d];
  }
  Tensor out = empty(shape, first->dtype, first->device);
  std::vector<int64_t> starts;
  int64_t at = 0;
  for (const Tensor& x : xs) {
    starts.push_back(at);
    Shape s = out->shape;
    s[d] = x->shape[d];
    copy_into(make_view(out, s, out->strides, at * out->strides[d]), x);
    at += x->shape[d];
  }
  return record(out, "concat", xs, [starts, d](const Tensor& dout, Grads& g) {
    for (size_t i = 0; i < g.size(); i++) {
      if (!g.needs(i)) continue;
      Shape s = g.slot(i)->shape;
      g.add(i, make_view(dout, s, dout->strides, dout->offset + starts[i] * dout->strides[d]));
    }
  });
}

}  // namespace duat
