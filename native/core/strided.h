// strided.h: row-major walks over a shape under several stride sets (views, broadcasting).
// fn receives each inner run: the element offset under every stride set, the run length and
// the inner stride of every set.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "tensor.h"

namespace duat {

template <size_t K, typename Fn>
void for_each_run(const Shape& shape, const std::array<const Shape*, K>& strides, Fn fn) {
  const size_t nd = shape.size();
  std::array<int64_t, K> off{}, inner{};
  if (nd == 0) {
    fn(off, int64_t{1}, inner);
    return;
  }
  for (int64_t d : shape)
    if (d == 0) return;
  for (size_t k = 0; k < K; k++) inner[k] = (*strides[k])[nd - 1];
  const int64_t n = shape[nd - 1];
  const int64_t outer = shape_numel(shape) / n;
  std::vector<int64_t> idx(nd, 0);
  for (int64_t o = 0; o < outer; o++) {
    fn(off, n, inner);
    for (size_t d = nd - 1; d-- > 0;) {
      idx[d]++;
      for (size_t k = 0; k < K; k++) off[k] += (*strides[k])[d];
      if (idx[d] < shape[d]) break;
      for (size_t k = 0; k < K; k++) off[k] -= (*strides[k])[d] * shape[d];
      idx[d] = 0;
    }
  }
}

// Strides that read `t` as if broadcast to `out` (0 along broadcast dimensions).
inline Shape broadcast_strides(const Tensor& t, const Shape& out) {
  Shape s(out.size(), 0);
  const size_t lead = out.size() - t->shape.size();
  for (size_t i = 0; i < t->shape.size(); i++) s[lead + i] = t->shape[i] == 1 ? 0 : t->strides[i];
  return s;
}

// Row-wise access for broadcasting when the last dimension is not broadcast and has unit
// stride: out row r (of shape[:-1]) reads the operand's row at row_offset(r).
struct RowMap {
  Shape lead;     // out's leading dims
  Shape strides;  // operand's broadcast strides over them (elements)
  static bool usable(const Tensor& t, const Shape& out) {
    return !out.empty() && !t->shape.empty() && t->shape.back() == out.back() && t->strides.back() == 1;
  }
  RowMap(const Tensor& t, const Shape& out) : lead(out.begin(), out.end() - 1) {
    const Shape s = broadcast_strides(t, out);
    strides.assign(s.begin(), s.end() - 1);
  }
  int64_t row_offset(int64_t r) const {
    int64_t off = 0;
    for (size_t d = lead.size(); d-- > 0;) {
      off += (r % lead[d]) * strides[d];
      r /= lead[d];
    }
    return off;
  }
};

// dst rows (located through `map`) += src rows (contiguous, C wide): many src rows may add into
// one dst row, so threads split the columns and no two threads write the same element.
template <typename T>
void add_rows_by_columns(T* dst, const RowMap& map, const float* src, int64_t rows, int64_t C) {
  const int64_t chunks =
      rows * C >= (1 << 15) ? std::min<int64_t>(get_num_threads(), std::max<int64_t>(1, C / 16)) : 1;
  parallel_for(chunks, [&](int64_t t) {
    const int64_t c0 = C * t / chunks, c1 = C * (t + 1) / chunks;
    for (int64_t r = 0; r < rows; r++) {
      T* rd = dst + map.row_offset(r);
      const float* rs = src + r * C;
      for (int64_t j = c0; j < c1; j++) rd[j] += rs[j];
    }
  });
}

}  // namespace duat
