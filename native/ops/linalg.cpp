// linalg.cpp: matmul (batched) and linear, on sgemm. Transposed views are read in place (the
// trans flags of sgemm) instead of being copied. Backward ACCUMULATES (beta = 1).
#include <algorithm>
#include <string>
#include <vector>

#include "../core/parallel.h"
#include "../cpu/gemm.h"
#include "ops.h"

namespace duat {

namespace {

// A matrix as sgemm reads it: the last two dimensions of a tensor, row-major or transposed.
struct MatView {
  bool trans;
  int64_t ld;
};

// Whether the last two dims of t can be read by sgemm as they are.
bool gemm_readable(const Tensor& t, MatView* mv) {
  const int64_t nd = t->dim();
  const int64_t r = t->shape[nd - 2], c = t->shape[nd - 1];
  const int64_t s0 = t->strides[nd - 2], s1 = t->strides[nd - 1];
  if (s1 == 1 || c == 1) {
    *mv = {false, r == 1 ? std::max<int64_t>(c, 1) : s0};
    if (mv->ld >= std::max<int64_t>(c, 1)) return true;
  }
  if (s0 == 1 || r == 1) {
    *mv = {true, c == 1 ? std::max<int64_t>(r, 1) : s1};
    if (mv->ld >= std::max<int64_t>(r, 1)) return true;
  }
  return false;
}

// Offset of batch item `i` (row-major over the leading dims) in t's storage.
int64_t batch_offset(const Tensor& t, int64_t i) {
  int64_t off = t->offset;
  for (int64_t d = t->dim() - 3; d >= 0; d--) {
    off += (i % t->shape[d]) * t->strides[d];
    i /= t->shape[d];
  }
  return off;
}

// db[j] += sum over rows of dy[r, j]: per-thread partial sums over row ranges, then added.
void column_sums_into(const float* dy, int64_t rows, int64_t cols, float* db) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), rows * cols >> 16));
  std::vector<float> parts(static_cast<size_t>(chunks * cols), 0.0f);
  parallel_for(chunks, [&](int64_t c) {
    float* part = parts.data() + c * cols;
    for (int64_t r = c * rows / chunks; r < (c + 1) * rows / chunks; r++)
      for (int64_t j = 0; j < cols; j++) part[j] += dy[r * cols + j];
  });
  for (int64_t c = 0; c < chunks; c++)
    for (int64_t j = 0; j < cols; j++) db[j] += parts[c * cols + j];
}

Tensor readable(const Tensor& t, MatView* mv) {
  if (gemm_readable(t, mv)) return t;
  Tensor c = contiguous_data(t);
  gemm_readable(c, mv);
  return c;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_f32(a, "matmul", "the first operand");
  check_f32(b, "matmul", "the second operand");
  check_same_device(a, b, "matmul");
  check(a->dim() >= 2 && b->dim() >= 2, ERROR_SHAPE,
        "matmul: both operands need at least 2 dimensions, got " + shape_str(a->shape) + " and " + shape_str(b->shape));
  const int64_t M = a->size(-2), K = a->size(-1), N = b->size(-1);
  check(b->size(-2) == K, ERROR_SHAPE,
        "matmul: inner dimensions differ: " + shape_str(a->shape) + " @ " + shape_str(b->shape));
  const Shape batch(a->shape.begin(), a->shape.end() - 2);
  const bool shared_b = b->dim() == 2;
  if (!shared_b) {
    check(Shape(b->shape.begin(), b->shape.end() - 2) == batch, ERROR_SHAPE,
          "matmul: batch dimensions differ: " + shape_str(a->shape) + " @ " + shape_str(b->shape));
  }
  // A shared right operand and a left operand whose batch folds into rows: one 2-D product.
  const Tensor aa = shared_b && a->dim() > 2 ? contiguous_data(a) : a;
  const bool fold = shared_b;
  const int64_t batches = fold ? 1 : shape_numel(batch);
  const int64_t rows = fold ? aa->numel() / std::max<int64_t>(K, 1) : M;

  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = empty(out_shape);
  MatView va{}, vb{};
  Tensor ra = fold && a->dim() > 2 ? aa : readable(aa, &va), rb = readable(b, &vb);
  if (fold && a->dim() > 2) va = {false, K};
  const float* pa = static_cast<const float*>(ra->storage->data);
  const float* pb = static_cast<const float*>(rb->storage->data);
  float* po = out->f32();
  auto one = [&](int64_t i, bool par) {
    const int64_t oa = fold ? ra->offset : batch_offset(ra, i), ob = shared_b ? rb->offset : batch_offset(rb, i);
    sgemm(va.trans, vb.trans, rows, N, K, 1.0f, pa + oa, va.ld, pb + ob, vb.ld, 0.0f, po + i * M * N, N, par);
  };
  if (batches == 1) {
    one(0, true);
  } else {
    parallel_for(batches, [&](int64_t i) { one(i, false); });
  }
  if (!any_requires_grad({a, b})) return out;
  Tensor sa = detach(ra), sb = detach(rb);
  return record(out, "matmul", {a, b}, [=](const Tensor& dout, Grads& g) {
    const float* pa = static_cast<const float*>(sa->storage->data);
    const float* pb = static_cast<const float*>(sb->storage->data);
    const float* pd = dout->f32();
    if (g.needs(0)) {
      // dA += dout @ B^T (each batch slice written once: overwrite a fresh buffer)
      bool fresh = false;
      float* da = g.f32_for_write(0, &fresh);
      const float beta = fresh ? 0.0f : 1.0f;
      auto one = [&](int64_t i, bool par) {
        const int64_t ob = shared_b ? sb->offset : batch_offset(sb, i);
        sgemm(false, !vb.trans, rows, K, N, 1.0f, pd + i * M * N, N, pb + ob, vb.ld, beta, da + i * M * K, K, par);
      };
      if (batches == 1) one(0, true); else parallel_for(batches, [&](int64_t i) { one(i, false); });
    }
    if (g.needs(1)) {
      // dB += A^T @ dout (summed over the batch when B is shared: folded into one product)
      bool fresh = false;
      float* db = g.f32_for_write(1, &fresh);
      const float beta = fresh ? 0.0f : 1.0f;
      auto one = [&](int64_t i, bool par) {
        const int64_t oa = fold ? sa->offset : batch_offset(sa, i);
        sgemm(!va.trans, false, K, N, rows, 1.0f, pa + oa, va.ld, pd + i * M * N, N, beta, db + i * K * N, N, par);
      };
      if (batches == 1) one(0, true); else parallel_for(batches, [&](int64_t i) { one(i, false); });
    }
  });
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  check_f32(x, "linear", "the input");
  check_f32(w, "linear", "the weight");
  check_same_device(x, w, "linear");
  check_dim(w, 2, "linear", "the weight");
  check(x->dim() >= 1 && x->size(-1) == w->shape[1], ERROR_SHAPE,
        "linear: input shape " + shape_str(x->shape) + " does not end in the weight's input size " +
            std::to_string(w->shape[1]) + " (weight " + shape_str(w->shape) + ")");
  const int64_t in = w->shape[1], outf = w->shape[0];
  if (bias) {
    check_f32(bias, "linear", "the bias");
    check_same_device(x, bias, "linear");
    check(bias->dim() == 1 && bias->shape[0] == outf, ERROR_SHAPE,
          "linear: bias shape " + shape_str(bias->shape) + " does not match the weight's output size " +
              std::to_string(outf));
  }
  const Tensor xc = contiguous_data(x), wc = contiguous_data(w), bc = bias ? contiguous_data(bias) : nullptr;
  const int64_t rows = xc->numel() / std::max<int64_t>(in, 1);
  Shape out_shape = x->shape;
  out_shape.back() = outf;
  Tensor out = empty(out_shape);
  sgemm(false, true, rows, outf, in, 1.0f, xc->f32(), in, wc->f32(), in, 0.0f, out->f32(), outf, true,
        bc ? bc->f32() : nullptr);
  if (!any_requires_grad({x, w, bias})) return out;
  Tensor sx = detach(xc), sw = detach(wc);
  return record(out, "linear", {x, w, bias}, [=](const Tensor& dout, Grads& g) {
    const float* dy = dout->f32();
    bool fresh = false;
    if (g.needs(0)) {
      float* dx = g.f32_for_write(0, &fresh);
      sgemm(false, false, rows, in, outf, 1.0f, dy, outf, sw->f32(), in, fresh ? 0.0f : 1.0f, dx, in);
    }
    if (g.needs(1)) {
      float* dw = g.f32_for_write(1, &fresh);
      sgemm(true, false, outf, in, rows, 1.0f, dy, outf, sx->f32(), in, fresh ? 0.0f : 1.0f, dw, in);
    }
    if (g.needs(2)) column_sums_into(dy, rows, outf, g.f32(2));
  });
}

}  // namespace duat
