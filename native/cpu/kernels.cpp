// kernels.cpp: vectorised row kernels, each compiled for AVX-512, AVX2 and baseline x86-64 and
// chosen at load time (target_clones); threaded over rows with the pool.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/parallel.h"
#include "math.h"

#if defined(__x86_64__) && !defined(__clang__)
#define DUAT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DUAT_CLONES
#endif

namespace duat {

namespace {
constexpr int64_t ELEM_GRAIN = 1 << 15;  // elements per task below which threading costs more

DUAT_CLONES void gelu_fwd_range(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = gelu(x[i]);
}

DUAT_CLONES void gelu_bwd_range(const float* x, const float* dy, float* dx, int64_t n) {
  for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * gelu_grad(x[i]);
}

DUAT_CLONES void softmax_row(const float* x, float* y, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = std::max(m, x[i]);
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) {
    y[i] = fast_exp(x[i] - m);
    s += y[i];
  }
  const float inv = 1.0f / s;
  for (int64_t i = 0; i < n; i++) y[i] *= inv;
}

DUAT_CLONES void softmax_bwd_row(const float* y, const float* dy, float* dx, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += dy[i] * y[i];
  for (int64_t i = 0; i < n; i++) dx[i] += y[i] * (dy[i] - s);
}

DUAT_CLONES void log_softmax_row(const float* x, float* y, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = std::max(m, x[i]);
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += fast_exp(x[i] - m);
  const float lse = m + std::log(s);
  for (int64_t i = 0; i < n; i++) y[i] = x[i] - lse;
}

DUAT_CLONES void log_softmax_bwd_row(const float* y, const float* dy, float* dx, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += dy[i];
  for (int64_t i = 0; i < n; i++) dx[i] += dy[i] - fast_exp(y[i]) * s;
}

DUAT_CLONES void layernorm_row(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,
                               int64_t C, float eps) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < C; i++) s += x[i];
  const float mu = s / static_cast<float>(C);
  float v = 0.0f;
#pragma omp simd reduction(+ : v)
  for (int64_t i = 0; i < C; i++) v += (x[i] - mu) * (x[i] - mu);
  const float r = 1.0f / std::sqrt(v / static_cast<float>(C) + eps);
  *mean = mu;
  *rstd = r;
  if (w && b) {
    for (int64_t i = 0; i < C; i++) y[i] = (x[i] - mu) * r * w[i] + b[i];
  } else {
    for (int64_t i = 0; i < C; i++) y[i] = (x[i] - mu) * r * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
  }
}

// One row's dx; dw/db partial sums go to per-task accumulators.
DUAT_CLONES void layernorm_bwd_row(const float* x, const float* w, float mu, float r, const float* dy, float* dx,
                                   float* dw, float* db, int64_t C) {
  float sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
  for (int64_t i = 0; i < C; i++) {
    const float xhat = (x[i] - mu) * r;
    const float g = dy[i] * (w ? w[i] : 1.0f);
    sg += g;
    sgx += g * xhat;
  }
  const float inv_c = 1.0f / static_cast<float>(C);
  sg *= inv_c;
  sgx *= inv_c;
  if (dx) {
    for (int64_t i = 0; i < C; i++) {
      const float xhat = (x[i] - mu) * r;
      dx[i] += r * (dy[i] * (w ? w[i] : 1.0f) - sg - xhat * sgx);
    }
  }
  if (dw) {
    for (int64_t i = 0; i < C; i++) dw[i] += dy[i] * (x[i] - mu) * r;
  }
  if (db) {
    for (int64_t i = 0; i < C; i++) db[i] += dy[i];
  }
}

template <typename RowFn>
void over_rows(int64_t rows, int64_t cols, RowFn fn) {
  const int64_t grain = std::max<int64_t>(1, ELEM_GRAIN / std::max<int64_t>(cols, 1));
  parallel_for_range(rows, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) fn(r);
  });
}

}  // namespace

void gelu_forward_cpu(const float* x, float* y, int64_t n) {
  parallel_for_range(n, ELEM_GRAIN, [&](int64_t lo, int64_t hi) { gelu_fwd_range(x + lo, y + lo, hi - lo); });
}

void gelu_backward_cpu(const float* x, const float* dy, float* dx, int64_t n) {
  parallel_for_range(n, ELEM_GRAIN,
                     [&](int64_t lo, int64_t hi) { gelu_bwd_range(x + lo, dy + lo, dx + lo, hi - lo); });
}

void softmax_forward_cpu(const float* x, float* y, int64_t rows, int64_t cols) {
  over_rows(rows, cols, [&](int64_t r) { softmax_row(x + r * cols, y + r * cols, cols); });
}

void softmax_backward_cpu(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols) {
  over_rows(rows, cols, [&](int64_t r) { softmax_bwd_row(y + r * cols, dy + r * cols, dx + r * cols, cols); });
}

void log_softmax_forward_cpu(const float* x, float* y, int64_t rows, int64_t cols) {
  over_rows(rows, cols, [&](int64_t r) { log_softmax_row(x + r * cols, y + r * cols, cols); });
}

void log_softmax_backward_cpu(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols) {
  over_rows(rows, cols, [&](int64_t r) { log_softmax_bwd_row(y + r * cols, dy + r * cols, dx + r * cols, cols); });
}

void layernorm_forward_cpu(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,
                           int64_t rows, int64_t C, float eps) {
  over_rows(rows, C, [&](int64_t r) { layernorm_row(x + r * C, w, b, y + r * C, mean + r, rstd + r, C, eps); });
}

void layernorm_backward_cpu(const float* x, const float* w, const float* mean, const float* rstd, const float* dy,
                            float* dx, float* dw, float* db, int64_t rows, int64_t C) {
  // dw and db are sums over rows: each thread sums its rows privately, then the parts are added.
  const int64_t threads = get_num_threads();
  const int64_t chunks = std::min<int64_t>(threads, std::max<int64_t>(1, rows * C / ELEM_GRAIN));
  const bool partial = dw || db;
  std::vector<float> parts(partial ? static_cast<size_t>(chunks * 2 * C) : 0, 0.0f);
  const int64_t step = (rows + chunks - 1) / chunks;
  parallel_for(chunks, [&](int64_t c) {
    float* pw = partial && dw ? parts.data() + c * 2 * C : nullptr;
    float* pb = partial && db ? parts.data() + c * 2 * C + C : nullptr;
    for (int64_t r = c * step; r < std::min(rows, (c + 1) * step); r++)
      layernorm_bwd_row(x + r * C, w, mean[r], rstd[r], dy + r * C, dx ? dx + r * C : nullptr, pw, pb, C);
  });
  for (int64_t c = 0; c < chunks && partial; c++) {
    for (int64_t i = 0; i < C; i++) {
      if (dw) dw[i] += parts[c * 2 * C + i];
      if (db) db[i] += parts[c * 2 * C + C + i];
    }
  }
}

}  // namespace duat
