// elementwise.cpp: add, sub, mul, div with NumPy broadcasting, and scalar add/mul, on the
// device's elementwise kernel (launch_map). Backward reduces the output gradient over broadcast
// dimensions back to each input's shape; it ACCUMULATES into the input gradients.
#include <algorithm>
#include <string>

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

MapOp map_op(BinaryOp op) {
  switch (op) {
    case BINARY_ADD: return MAP_ADD;
    case BINARY_SUB: return MAP_SUB;
    case BINARY_MUL: return MAP_MUL;
    default: return MAP_DIV;
  }
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; i++) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    DUAT_CHECK(da == db || da == 1 || db == 1, ERROR_SHAPE,
               std::string(op) + ": shapes " + shape_str(a) + " and " + shape_str(b) + " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// Input i's gradient from g (the output's shape): handed on when the shapes agree, summed over
// the broadcast dimensions otherwise.
void give(Grads& grads, size_t i, const Shape& shape, const Tensor& g) {
  if (shape == g->shape) {
    grads.pass(i, g);
    return;
  }
  grads.into(i, [&](const Tensor& slot, bool acc) {
    Shape view_shape(g->dim() - static_cast<int64_t>(shape.size()), 1), view_strides(view_shape.size(), 0);
    view_shape.insert(view_shape.end(), shape.begin(), shape.end());
    view_strides.insert(view_strides.end(), slot->strides.begin(), slot->strides.end());
    launch_reduce(make_view(slot, view_shape, view_strides, slot->offset), g, 1.0f, acc);
  });
}

// f(dout, other) laid out like the output.
Tensor mapped(MapOp op, const Tensor& dout, const Tensor& other, float scalar = 0.0f) {
  Tensor t = empty(dout->shape, DTYPE_F32, dout->device);
  launch_map(op, t, dout, other, scalar);
  return t;
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const char* name = binary_name(op);
  check_f32(a, name, "the first operand");
  check_f32(b, name, "the second operand");
  check_same_device(a, b, name);
  Tensor out = empty(broadcast_shapes(a->shape, b->shape, name), DTYPE_F32, a->device);
  launch_map(map_op(op), out, a, b);
  if (!any_requires_grad({a, b})) return out;
  Tensor sa = detach(a), sb = detach(b);
  return record(out, name, {a, b}, [op, sa, sb](const Tensor& dout, Grads& g) {
    if (g.needs(0)) {
      switch (op) {
        case BINARY_ADD:
        case BINARY_SUB: give(g, 0, sa->shape, dout); break;
        case BINARY_MUL: give(g, 0, sa->shape, mapped(MAP_MUL, dout, sb)); break;
        case BINARY_DIV: give(g, 0, sa->shape, mapped(MAP_DIV, dout, sb)); break;
      }
    }
    if (g.needs(1)) {
      switch (op) {
        case BINARY_ADD: give(g, 1, sb->shape, dout); break;
        case BINARY_SUB: give(g, 1, sb->shape, mapped(MAP_MUL_SCALAR, dout, nullptr, -1.0f)); break;
        case BINARY_MUL: give(g, 1, sb->shape, mapped(MAP_MUL, dout, sa)); break;
        case BINARY_DIV: {
          // d(a / b)/db = -a / b^2
          Tensor t = mapped(MAP_MUL, dout, sa);
          launch_map(MAP_DIV, t, t, sb);
          launch_map(MAP_DIV, t, t, sb);
          launch_map(MAP_MUL_SCALAR, t, t, nullptr, -1.0f);
          give(g, 1, sb->shape, t);
          break;
        }
      }
    }
  });
}

Tensor scalar_op(MapOp op, const Tensor& a, float s, const char* name) {
  check_f32(a, name, "the tensor");
  Tensor out = empty(a->shape, DTYPE_F32, a->device);
  launch_map(op, out, a, nullptr, s);
  if (!any_requires_grad({a})) return out;
  return record(out, name, {a}, [op, s](const Tensor& dout, Grads& g) {
    if (op == MAP_ADD_SCALAR) {
      g.pass(0, dout);
      return;
    }
    g.into(0, [&](const Tensor& slot, bool acc) { launch_map(MAP_MUL_SCALAR, slot, dout, nullptr, s, acc); });
  });
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary(BINARY_ADD, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(BINARY_SUB, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(BINARY_MUL, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(BINARY_DIV, a, b); }
Tensor add_scalar(const Tensor& a, float s) { return scalar_op(MAP_ADD_SCALAR, a, s, "addScalar"); }
Tensor mul_scalar(const Tensor& a, float s) { return scalar_op(MAP_MUL_SCALAR, a, s, "mulScalar"); }

}  // namespace duat
