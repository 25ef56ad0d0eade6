// elementwise.cpp: add, sub, mul, div with NumPy broadcasting, and scalar add/mul.
// Backward reduces the output gradient over broadcast dimensions back to each input's shape;
// it ACCUMULATES into the input gradients.
#include <algorithm>
#include <string>

#include "../core/parallel.h"
#include "../core/strided.h"
#include "ops.h"

namespace duat {

namespace {

enum BinaryOp { BINARY_ADD, BINARY_SUB, BINARY_MUL, BINARY_DIV };

const char* binary_name(BinaryOp op) {
  switch (op) {
    case BINARY_ADD: return "add";
    case BINARY_SUB: return "sub";
    case BINARY_MUL: return "mul";
    default: return "div";
  }
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; i++) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    check(da == db || da == 1 || db == 1, ERROR_SHAPE,
          std::string(op) + ": shapes " + shape_str(a) + " and " + shape_str(b) + " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

template <typename F>
void apply_binary(const Tensor& out, const Tensor& a, const Tensor& b, F f) {
  float* o = out->f32();
  const float* pa = a->f32();
  const float* pb = b->f32();
  if (a->shape == b->shape && a->is_contiguous() && b->is_contiguous()) {
    parallel_for_range(out->numel(), 1 << 15, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) o[i] = f(pa[i], pb[i]);
    });
    return;
  }
  if (RowMap::usable(a, out->shape) && RowMap::usable(b, out->shape)) {
    // Broadcast over leading dims only: threaded over rows, the inner loop contiguous.
    const RowMap ma(a, out->shape), mb(b, out->shape);
    const int64_t C = out->shape.back(), rows = out->numel() / std::max<int64_t>(C, 1);
    parallel_for_range(rows, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(C, 1)), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; r++) {
        const float* ra = pa + ma.row_offset(r);
        const float* rb = pb + mb.row_offset(r);
        float* ro = o + r * C;
        for (int64_t j = 0; j < C; j++) ro[j] = f(ra[j], rb[j]);
      }
    });
    return;
  }
  const Shape sa = broadcast_strides(a, out->shape), sb = broadcast_strides(b, out->shape);
  for_each_run<3>(out->shape, {&out->strides, &sa, &sb}, [&](auto off, int64_t n, auto inc) {
    for (int64_t i = 0; i < n; i++) o[off[0] + i] = f(pa[off[1] + i * inc[1]], pb[off[2] + i * inc[2]]);
  });
}

// dst (shape of an input, contiguous) += g (output shape, contiguous) summed over broadcast dims.
void reduce_into(float* dst, const Shape& dst_shape, const Tensor& g) {
  if (dst_shape == g->shape) {
    const float* pg = g->f32();
    parallel_for_range(g->numel(), 1 << 15, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) dst[i] += pg[i];
    });
    return;
  }
  auto view = std::make_shared<TensorImpl>();
  view->shape = dst_shape;
  view->strides = contiguous_strides(dst_shape);
  const float* pg = g->f32();
  if (RowMap::usable(view, g->shape)) {
    // Many output rows add into one input row.
    const int64_t C = g->shape.back();
    add_rows_by_columns(dst, RowMap(view, g->shape), pg, g->numel() / std::max<int64_t>(C, 1), C);
    return;
  }
  const Shape sd = broadcast_strides(view, g->shape);
  for_each_run<2>(g->shape, {&g->strides, &sd}, [&](auto off, int64_t n, auto inc) {
    for (int64_t i = 0; i < n; i++) dst[off[1] + i * inc[1]] += pg[off[0] + i];
  });
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const char* name = binary_name(op);
  check_f32(a, name, "the first operand");
  check_f32(b, name, "the second operand");
  check_same_device(a, b, name);
  Tensor out = empty(broadcast_shapes(a->shape, b->shape, name));
  switch (op) {
    case BINARY_ADD: apply_binary(out, a, b, [](float x, float y) { return x + y; }); break;
    case BINARY_SUB: apply_binary(out, a, b, [](float x, float y) { return x - y; }); break;
    case BINARY_MUL: apply_binary(out, a, b, [](float x, float y) { return x * y; }); break;
    case BINARY_DIV: apply_binary(out, a, b, [](float x, float y) { return x / y; }); break;
  }
  if (!any_requires_grad({a, b})) return out;
  Tensor sa = detach(a), sb = detach(b);
  return record(out, name, {a, b}, [op, sa, sb](const Tensor& dout, Grads& g) {
    const Shape& os = dout->shape;
    // The gradient of each input at the output's shape, then reduced to the input's shape.
    auto grad_at = [&](const Tensor& other, const Tensor& self, bool is_a) -> Tensor {
      Tensor t = empty(os);
      switch (op) {
        case BINARY_ADD: return dout;
        case BINARY_SUB:
          if (is_a) return dout;
          apply_binary(t, dout, dout, [](float x, float) { return -x; });
          return t;
        case BINARY_MUL: apply_binary(t, dout, other, [](float x, float y) { return x * y; }); return t;
        case BINARY_DIV:
          if (is_a) {
            apply_binary(t, dout, other, [](float x, float y) { return x / y; });
          } else {
            Tensor q = empty(os);
            apply_binary(q, self, other, [](float y, float x) { return x / (y * y); });  // a / b^2
            apply_binary(t, dout, q, [](float x, float y) { return -x * y; });
          }
          return t;
      }
      return t;
    };
    // Same-shape gradients are handed through without a copy where possible.
    auto give = [&](size_t i, const Shape& shape, const Tensor& grad) {
      if (shape == grad->shape) {
        g.pass(i, grad);
      } else {
        reduce_into(g.f32(i), shape, grad);
      }
    };
    if (g.needs(0)) give(0, sa->shape, grad_at(sb, sa, true));
    if (g.needs(1)) give(1, sb->shape, grad_at(sa, sb, false));
  });
}

template <typename F>
Tensor unary_map(const Tensor& a, F f) {
  Tensor out = empty(a->shape);
  float* o = out->f32();
  Tensor c = contiguous_data(a);
  const float* p = c->f32();
  parallel_for_range(out->numel(), 1 << 15, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) o[i] = f(p[i]);
  });
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary(BINARY_ADD, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(BINARY_SUB, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(BINARY_MUL, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(BINARY_DIV, a, b); }

Tensor add_scalar(const Tensor& a, float s) {
  check_f32(a, "addScalar", "the tensor");
  Tensor out = unary_map(a, [s](float x) { return x + s; });
  return record(out, "add_scalar", {a}, [](const Tensor& dout, Grads& g) { g.add(0, dout); });
}

Tensor mul_scalar(const Tensor& a, float s) {
  check_f32(a, "mulScalar", "the tensor");
  Tensor out = unary_map(a, [s](float x) { return x * s; });
  return record(out, "mul_scalar", {a}, [s](const Tensor& dout, Grads& g) {
    float* d = g.f32(0);
    const float* p = dout->f32();
    for (int64_t i = 0, n = dout->numel(); i < n; i++) d[i] += s * p[i];
  });
}

}  // namespace duat
