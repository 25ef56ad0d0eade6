// reduce.cpp: sum and mean over dimensions (fp64 accumulation), argmax.
// Backward broadcasts the output gradient back over the reduced dims and ACCUMULATES.
#include <algorithm>
#include <cmath>
#include <string>

#include "../core/parallel.h"
#include "../core/strided.h"
#include "ops.h"

namespace duat {

namespace {

// The reduced dims as a mask, validated.
std::vector<bool> reduce_mask(const Tensor& x, const std::vector<int64_t>& dims, const char* op) {
  std::vector<bool> mask(x->dim(), dims.empty());
  for (int64_t d : dims) {
    const int64_t w = wrap_dim(d, x->dim(), op);
    check(!mask[w], ERROR_SHAPE, std::string(op) + ": dimension " + std::to_string(d) + " is listed twice");
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
  const float scale = average ? 1.0f / static_cast<float>(std::max<int64_t>(count, 1)) : 1.0f;
  if (average) check(count > 0, ERROR_SHAPE, std::string(op) + ": mean over an empty dimension");
  const int64_t n_out = shape_numel(keep);
  // The fp64 accumulator comes from the block cache (a fresh vector would page-fault each call).
  Tensor acc_buf = zeros({n_out * 2});
  double* acc = reinterpret_cast<double*>(acc_buf->f32());
  const float* px = x->f32();
  if (n_out == 1 && x->is_contiguous()) {
    // Everything: per-thread partial sums.
    const int64_t n = x->numel();
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), n >> 15));
    std::vector<double> part(chunks, 0.0);
    parallel_for(chunks, [&](int64_t c) {
      double s = 0.0;
      for (int64_t i = c * n / chunks; i < (c + 1) * n / chunks; i++) s += px[i];
      part[c] = s;
    });
    for (double s : part) acc[0] += s;
  } else if (!mask.back() && x->is_contiguous() && x->dim() >= 2) {
    // The last dim is kept: rows of x add into rows of the output; threads split the columns.
    auto keep_t = std::make_shared<TensorImpl>();
    keep_t->shape = keep;
    keep_t->strides = contiguous_strides(keep);
    const int64_t C = x->shape.back();
    add_rows_by_columns(acc, RowMap(keep_t, x->shape), px, x->numel() / std::max<int64_t>(C, 1), C);
  } else {
    auto keep_t = std::make_shared<TensorImpl>();
    keep_t->shape = keep;
    keep_t->strides = contiguous_strides(keep);
    const Shape so = broadcast_strides(keep_t, x->shape);
    for_each_run<2>(x->shape, {&x->strides, &so}, [&](auto off, int64_t n, auto inc) {
      if (inc[1] == 0) {
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) s += px[off[0] + i * inc[0]];
        acc[off[1]] += s;
      } else {
        for (int64_t i = 0; i < n; i++) acc[off[1] + i * inc[1]] += px[off[0] + i * inc[0]];
      }
    });
  }
  Tensor out = empty(out_shape);
  float* po = out->f32();
  for (int64_t i = 0; i < n_out; i++) po[i] = static_cast<float>(acc[i] * scale);
  const Shape in_shape = x->shape;
  return record(out, op, {x}, [keep, in_shape, scale](const Tensor& dout, Grads& g) {
    // Read dout (as `keep`) broadcast to the input's shape.
    auto dk = make_view(dout, keep, contiguous_strides(keep), dout->offset);
    if (RowMap::usable(dk, in_shape)) {
      const RowMap md(dk, in_shape);
      const int64_t C = in_shape.back(), rows = shape_numel(in_shape) / std::max<int64_t>(C, 1);
      float* dx = g.f32(0);
      const float* pd = dout->f32();
      parallel_for_range(rows, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(C, 1)), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; r++) {
          const float* rd = pd + md.row_offset(r);
          float* rx = dx + r * C;
          for (int64_t j = 0; j < C; j++) rx[j] += scale * rd[j];
        }
      });
      return;
    }
    const Shape sd = broadcast_strides(dk, in_shape);
    const Shape sx = contiguous_strides(in_shape);
    float* dx = g.f32(0);
    const float* pd = dout->f32();
    for_each_run<2>(in_shape, {&sx, &sd}, [&](auto off, int64_t n, auto inc) {
      for (int64_t i = 0; i < n; i++) dx[off[0] + i] += scale * pd[off[1] + i * inc[1]];
    });
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
  check(x->dim() >= 1 && x->size(-1) > 0, ERROR_SHAPE, "argmax: needs a non-empty last dimension, got " + shape_str(x->shape));
  const Tensor c = contiguous_data(x);
  const int64_t cols = c->size(-1), rows = c->numel() / cols;
  Shape out_shape(x->shape.begin(), x->shape.end() - 1);
  Tensor out = empty(out_shape, DTYPE_I32);
  const float* p = c->f32();
  int32_t* o = out->i32();
  for (int64_t r = 0; r < rows; r++) {
    const float* row = p + r * cols;
    int64_t best = 0;
    for (int64_t j = 1; j < cols; j++)
      if (row[j] > row[best] || (std::isnan(row[j]) && !std::isnan(row[best]))) best = j;
    o[r] = static_cast<int32_t>(best);
  }
  return out;
}

}  // namespace duat
