// linalg.cpp: matmul (batched) and linear on the strided matrix product (GemmArgs). Views are
// read in place through their strides (transposed operands included) instead of being copied.
// Backward ACCUMULATES (beta = 1, or written when the gradient buffer is fresh).
#include <string>

#include "matrix.h"
#include "ops.h"

namespace duat {

int gemm_dim(int64_t v, const char* op) {
  DUAT_CHECK(v <= 0x7fffffff, ERROR_SHAPE, std::string(op) + ": a matrix dimension of " + std::to_string(v) +
                                          " is beyond the 2^31 - 1 a product supports");
  return static_cast<int>(v);
}

bool collapse_dims(const Tensor& t, int64_t lo, int64_t hi, int64_t* count, int64_t* stride) {
  *count = 1;
  *stride = 0;
  int64_t expect = -1;
  for (int64_t d = hi; d-- > lo;) {
    if (t->shape[d] == 1) continue;
    if (expect < 0) {
      *stride = t->strides[d];
    } else if (t->strides[d] != expect) {
      return false;
    }
    *count *= t->shape[d];
    expect = t->strides[d] * t->shape[d];
  }
  return true;
}

bool as_mat(const Tensor& t, Mat* m) {
  const int64_t nd = t->dim();
  m->p = t->ptr_f32();
  m->rows = t->shape[nd - 2];
  m->cols = t->shape[nd - 1];
  m->s_r = t->strides[nd - 2];
  m->s_c = t->strides[nd - 1];
  return collapse_dims(t, 0, nd - 2, &m->batch, &m->s_z);
}

bool as_rows(const Tensor& t, Mat* m) {
  const int64_t nd = t->dim();
  m->p = t->ptr_f32();
  m->batch = 1;
  m->s_z = 0;
  m->cols = t->shape[nd - 1];
  m->s_c = t->strides[nd - 1];
  return collapse_dims(t, 0, nd - 1, &m->rows, &m->s_r);
}

void gemm_into_grad(Grads& grads, size_t i, GemmArgs g, bool fold_rows, Device device) {
  bool fresh = false;
  Tensor& s = grads.slot_for_write(i, &fresh);
  Mat m;
  if ((fold_rows ? as_rows(s, &m) : as_mat(s, &m)) && (m.s_c == 1 || m.cols == 1)) {
    g.C = m.p, g.c_m = m.s_r, g.c_batch = m.s_z;
    g.beta = fresh ? 0.0f : 1.0f;
    backend(device).gemm(g);
    return;
  }
  const Tensor tmp = empty(s->shape, DTYPE_F32, device);
  fold_rows ? as_rows(tmp, &m) : as_mat(tmp, &m);
  g.C = m.p, g.c_m = m.s_r, g.c_batch = m.s_z;
  g.beta = 0.0f;
  backend(device).gemm(g);
  if (fresh) {
    copy_into(s, tmp);
  } else {
    add_into(s, tmp);
  }
}

namespace {

// t itself when `ok(t)` can read it as it is, else its contiguous copy (which always can).
template <typename F>
Tensor readable(const Tensor& t, Mat* m, F ok) {
  if (ok(t, m)) return t;
  const Tensor c = contiguous_data(t);
  ok(c, m);
  return c;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_f32(a, "matmul", "the first operand");
  check_f32(b, "matmul", "the second operand");
  check_same_device(a, b, "matmul");
  DUAT_CHECK(a->dim() >= 2 && b->dim() >= 2, ERROR_SHAPE,
             "matmul: both operands need at least 2 dimensions, got " + shape_str(a->shape) + " and " + shape_str(b->shape));
  const int64_t M = a->size(-2), K = a->size(-1), N = b->size(-1);
  DUAT_CHECK(b->size(-2) == K, ERROR_SHAPE,
             "matmul: inner dimensions differ: " + shape_str(a->shape) + " @ " + shape_str(b->shape));
  const Shape batch(a->shape.begin(), a->shape.end() - 2);
  // A two-dimensional right operand is shared by the batch: the left operand's batch folds into
  // its rows and the product is one (batch*M) x N matrix; otherwise a batched product.
  const bool shared = b->dim() == 2;
  if (!shared) {
    DUAT_CHECK(Shape(b->shape.begin(), b->shape.end() - 2) == batch, ERROR_SHAPE,
               "matmul: batch dimensions differ: " + shape_str(a->shape) + " @ " + shape_str(b->shape));
  }
  Mat ma, mb;
  const Tensor ra = readable(a, &ma, shared ? as_rows : as_mat);
  const Tensor rb = readable(b, &mb, as_mat);
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = empty(out_shape, DTYPE_F32, a->device);
  const int64_t batches = shared ? 1 : shape_numel(batch);
  const int64_t rows = shared ? ma.rows : M;
  GemmArgs g;
  g.M = gemm_dim(rows, "matmul"), g.N = gemm_dim(N, "matmul"), g.K = gemm_dim(K, "matmul");
  g.batch = gemm_dim(batches, "matmul");
  g.A = ma.p, g.a_m = ma.s_r, g.a_k = ma.s_c, g.a_batch = shared ? 0 : ma.s_z;
  g.B = mb.p, g.b_n = mb.s_c, g.b_k = mb.s_r, g.b_batch = shared ? 0 : mb.s_z;  // B(n, k) = b(k, n)
  g.C = out->ptr_f32(), g.c_m = N, g.c_batch = M * N;
  backend(a->device).gemm(g);
  if (!any_requires_grad({a, b})) return out;
  const Tensor sa = detach(ra), sb = detach(rb);
  const Device dev = a->device;
  return record(out, "matmul", {a, b}, [=](const Tensor& dout, Grads& grads) {
    const float* pd = dout->ptr_f32();  // contiguous (batch, M, N)
    if (grads.needs(0)) {
      // dA(m, k) = sum_n dout(m, n) b(k, n)
      GemmArgs d;
      d.M = g.M, d.N = g.K, d.K = g.N, d.batch = g.batch;
      d.A = pd, d.a_m = N, d.a_k = 1, d.a_batch = M * N;
      d.B = mb.p, d.b_n = mb.s_r, d.b_k = mb.s_c, d.b_batch = g.b_batch;
      gemm_into_grad(grads, 0, d, shared, dev);
    }
    if (grads.needs(1)) {
      // dB(k, n) = sum_m a(m, k) dout(m, n), summed over the batch when B is shared (folded rows).
      GemmArgs d;
      d.M = g.K, d.N = g.N, d.K = g.M, d.batch = g.batch;
      d.A = ma.p, d.a_m = ma.s_c, d.a_k = ma.s_r, d.a_batch = g.a_batch;
      d.B = pd, d.b_n = 1, d.b_k = N, d.b_batch = M * N;
      gemm_into_grad(grads, 1, d, false, dev);
    }
    (void)sa, (void)sb;  // keep the operands' storage alive
  });
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  check_f32(x, "linear", "the input");
  check_f32(w, "linear", "the weight");
  check_same_device(x, w, "linear");
  check_dim(w, 2, "linear", "the weight");
  DUAT_CHECK(x->dim() >= 1 && x->size(-1) == w->shape[1], ERROR_SHAPE,
             "linear: input shape " + shape_str(x->shape) + " does not end in the weight's input size " +
                 std::to_string(w->shape[1]) + " (weight " + shape_str(w->shape) + ")");
  const int64_t in = w->shape[1], outf = w->shape[0];
  if (bias) {
    check_f32(bias, "linear", "the bias");
    check_same_device(x, bias, "linear");
    DUAT_CHECK(bias->dim() == 1 && bias->shape[0] == outf, ERROR_SHAPE,
               "linear: bias shape " + shape_str(bias->shape) + " does not match the weight's output size " +
                   std::to_string(outf));
  }
  // x as rows (its leading dims folded), read in place when it can be.
  Mat mx;
  const Tensor x2 = x->dim() == 1 ? reshape(detach(x), {1, in}) : x;
  const Tensor rx = readable(x2, &mx, as_rows);
  const Tensor bc = bias ? contiguous_data(bias) : nullptr;
  Shape out_shape = x->shape;
  out_shape.back() = outf;
  Tensor out = empty(out_shape, DTYPE_F32, x->device);
  GemmArgs g;
  g.M = gemm_dim(mx.rows, "linear"), g.N = gemm_dim(outf, "linear"), g.K = gemm_dim(in, "linear");
  g.A = mx.p, g.a_m = mx.s_r, g.a_k = mx.s_c;
  g.B = w->ptr_f32(), g.b_n = w->strides[0], g.b_k = w->strides[1];
  g.C = out->ptr_f32(), g.c_m = outf;
  g.bias = bc ? bc->ptr_f32() : nullptr;
  backend(x->device).gemm(g);
  if (!any_requires_grad({x, w, bias})) return out;
  const Tensor sx = detach(rx), sw = detach(w);
  const Device dev = x->device;
  const int64_t rows = mx.rows;
  return record(out, "linear", {x, w, bias}, [=](const Tensor& dout, Grads& grads) {
    const float* dy = dout->ptr_f32();  // contiguous (rows, out)
    if (grads.needs(0)) {
      // dx(r, i) = sum_o dy(r, o) w(o, i)
      GemmArgs d;
      d.M = static_cast<int>(rows), d.N = static_cast<int>(in), d.K = static_cast<int>(outf);
      d.A = dy, d.a_m = outf, d.a_k = 1;
      d.B = sw->ptr_f32(), d.b_n = sw->strides[1], d.b_k = sw->strides[0];
      gemm_into_grad(grads, 0, d, true, dev);
    }
    if (grads.needs(1)) {
      // dw(o, i) = sum_r dy(r, o) x(r, i)
      GemmArgs d;
      d.M = static_cast<int>(outf), d.N = static_cast<int>(in), d.K = static_cast<int>(rows);
      d.A = dy, d.a_m = 1, d.a_k = outf;
      d.B = mx.p, d.b_n = mx.s_c, d.b_k = mx.s_r;
      gemm_into_grad(grads, 1, d, false, dev);
    }
    if (grads.needs(2)) {
      grads.into(2, [&](const Tensor& db, bool acc) {
        launch_reduce(make_view(db, {1, outf}, {0, db->strides[0]}, db->offset),
                      make_view(dout, {rows, outf}, {outf, 1}, dout->offset), 1.0f, acc);
      });
    }
    (void)sx;
  });
}

}  // namespace duat
