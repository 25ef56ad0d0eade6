// kernels.cpp: vectorised row kernels (bodies in row_kernels.inc), compiled for AVX-512, AVX2
// and baseline x86-64 and chosen at run time with the GEMM (cpu_isa_active); threaded over rows.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/device_math.h"
#include "../core/parallel.h"
#include "gemm.h"
#include "math.h"
#include "math_avx512.h"

namespace duat {

// A kernel whose results must not depend on the instruction set opts out of FMA contraction
// (GCC: the optimize attribute; clang: a pragma in the body).
#if defined(__GNUC__) && !defined(__clang__)
#define DUAT_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define DUAT_NO_CONTRACT
#endif

// The row kernels of one instruction set (row_kernels.inc ends with its entry, TABLE); one
// per instruction set, indexed by CpuIsa.
namespace {
struct RowKernels {
  void (*gelu_fwd_range)(const float*, float*, int64_t, float);
  void (*stage_combine_range)(float*, const float*, const float*, const float*, int64_t, int64_t, float, float, int64_t);
  void (*gelu_bwd_range)(const float*, const float*, float*, int64_t, bool);
  void (*softmax_row)(const float*, float*, int64_t);
  void (*softmax_bwd_row)(const float*, const float*, float*, int64_t);
  float (*softmax_lse_row)(const float*, float*, int64_t);
  void (*softmax_lse_cols)(float*, int64_t, int64_t, int64_t, float*, const float*, float*);
  void (*softmax_bwd_cols)(const float*, float*, int64_t, int64_t, int64_t);
  void (*log_softmax_row)(const float*, float*, int64_t);
  void (*log_softmax_bwd_row)(const float*, const float*, float*, int64_t);
  void (*layernorm_row)(const float*, const float*, const float*, float*, float*, float*, int64_t, float);
  void (*layernorm_rows)(const float*, int64_t, const float*, const float*, float*, int64_t, float*, float*, int64_t,
                         int64_t, float, const ResidualRows*);
  void (*layernorm_bwd_row)(const float*, const float*, float, float, const float*, float*, int64_t, bool);
  void (*layernorm_bwd_params)(const float*, const float*, const float*, const float*, int64_t, int64_t, float*, float*);
  void (*layernorm_resid_bwd_row)(const float*, const float*, float, float, const float*, float*, bool, double*, bool,
                                  int64_t);
  void (*small_gemm)(bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*,
                     int64_t);
  void (*accumulate_f64)(const float*, double*, int64_t);
  void (*accumulate_rows_f64)(const float*, int64_t, int64_t, double*, int64_t);
  double (*sum_squares_f64)(const float*, int64_t);
  float (*fold_affine_row)(const float*, const float*, const float*, float*, int64_t);
  void (*fold_affine_bwd_row)(const float*, const float*, const float*, const float*, float, float*, float*, float*,
                              int64_t);
  void (*adamw_range)(float*, const float*, float*, float*, int64_t, float, const AdamWConsts&);
};
}  // namespace

namespace isa_generic {
#include "row_kernels.inc"
}  // namespace isa_generic

#if defined(__x86_64__)
// GCC's target pragma; clang (the release builds use zig's clang) ignores it and takes the same
// target as an attribute applied to every function in the region.
#define DUAT_PRAGMA(...) _Pragma(#__VA_ARGS__)
#if defined(__clang__)
#define DUAT_TARGET_BEGIN(isa) DUAT_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define DUAT_TARGET_END DUAT_PRAGMA(clang attribute pop)
#else
#define DUAT_TARGET_BEGIN(isa) DUAT_PRAGMA(GCC push_options) DUAT_PRAGMA(GCC target(isa))
#define DUAT_TARGET_END DUAT_PRAGMA(GCC pop_options)
#endif

DUAT_TARGET_BEGIN("avx2,fma,bmi,bmi2,f16c")
namespace isa_avx2 {
#include "row_kernels.inc"
}  // namespace isa_avx2
DUAT_TARGET_END

// GCC 12's max intrinsic passes _mm512_undefined_ps(), which -Wmaybe-uninitialized reports
// once inlined (math_avx512.h); nothing here is uninitialised.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
DUAT_TARGET_BEGIN("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2,f16c")
#define DUAT_ROW_KERNELS_AVX512 1
namespace isa_avx512 {
#include "row_kernels.inc"
}  // namespace isa_avx512
#undef DUAT_ROW_KERNELS_AVX512
DUAT_TARGET_END
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

namespace {

constexpr int64_t ELEM_GRAIN = 1 << 15;  // elements per task below which threading costs more

#if !defined(__x86_64__)
namespace isa_avx2 = isa_generic;
namespace isa_avx512 = isa_generic;
#endif

// The AVX-512 entry's small_gemm is not used by sgemm, which has a register-blocked AVX-512
// kernel of its own (gemm.cpp); it stays for a uniform table.
const RowKernels ROW_KERNELS[] = {isa_generic::TABLE, isa_avx2::TABLE, isa_avx512::TABLE};

const RowKernels& rk() { return ROW_KERNELS[cpu_isa_active()]; }

template <typename RowFn>
void over_rows(int64_t rows, int64_t cols, RowFn fn) {
  const int64_t grain = std::max<int64_t>(1, ELEM_GRAIN / std::max<int64_t>(cols, 1));
  parallel_for_range(rows, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) fn(r);
  });
}

}  // namespace

void accumulate_f64_cpu(const float* x, double* acc, int64_t n) { rk().accumulate_f64(x, acc, n); }
float fold_affine_row_cpu(const float* w, const float* g, const float* beta, float* wf, int64_t C) {
  return rk().fold_affine_row(w, g, beta, wf, C);
}
void fold_affine_backward_row_cpu(const float* d, const float* w, const float* g, const float* beta, float db,
                                  float* dw, float* dg, float* dbeta, int64_t C) {
  rk().fold_affine_bwd_row(d, w, g, beta, db, dw, dg, dbeta, C);
}
void accumulate_rows_f64_cpu(const float* x, int64_t ld, int64_t rows, double* acc, int64_t n) {
  rk().accumulate_rows_f64(x, ld, rows, acc, n);
}
void gelu_backward_rows_cpu(const float* x, const float* dy, float* dx, int64_t ld, int64_t rows, int64_t cols,
                            double* sums) {
  constexpr int64_t GROUP_ELEMENTS = 12288;  // 48 KiB of gradient
  const int64_t group = std::max<int64_t>(1, GROUP_ELEMENTS / std::max<int64_t>(cols, 1));
  for (int64_t r0 = 0; r0 < rows; r0 += group) {
    const int64_t r1 = std::min(rows, r0 + group), off = r0 * ld;
    if (ld == cols) {  // the group's rows are one run
      gelu_backward_range_cpu(x + off, dy + off, dx + off, (r1 - r0) * cols, false);
    } else {
      for (int64_t o = off; o < r1 * ld; o += ld) gelu_backward_range_cpu(x + o, dy + o, dx + o, cols, false);
    }
    if (sums) accumulate_rows_f64_cpu(dx + off, ld, r1 - r0, sums, cols);
  }
}
void sum_parts_f64_cpu(const double* part, int64_t parts, int64_t n, float* out, bool accumulate) {
  std::vector<double> s(static_cast<size_t>(n), 0.0);
  for (int64_t p = 0; p < parts; p++)  // part after part: each row read once, in order
    for (int64_t j = 0; j < n; j++) s[j] += part[p * n + j];
  for (int64_t j = 0; j < n; j++) out[j] = accumulate ? out[j] + static_cast<float>(s[j]) : static_cast<float>(s[j]);
}

double sum_squares_f64_cpu(const float* x, int64_t n) { return rk().sum_squares_f64(x, n); }

void adamw_range_cpu(float* p, const float* g, float* m, float* v, int64_t n, float gs, const AdamWConsts& c) {
  rk().adamw_range(p, g, m, v, n, gs, c);
}

void gelu_forward_cpu(const float* x, float* y, int64_t n) {
  parallel_for_range(n, ELEM_GRAIN, [&](int64_t lo, int64_t hi) { rk().gelu_fwd_range(x + lo, y + lo, hi - lo, 0.0f); });
}

void gelu_backward_cpu(const float* x, const float* dy, float* dx, int64_t n) {
  parallel_for_range(n, ELEM_GRAIN,
                     [&](int64_t lo, int64_t hi) { rk().gelu_bwd_range(x + lo, dy + lo, dx + lo, hi - lo, true); });
}

void softmax_forward_cpu(const float* x, float* y, int64_t rows, int64_t cols) {
  over_rows(rows, cols, [&](int64_t r) { rk().softmax_row(x + r * cols, y + r * cols, cols); });
}

void softmax_backward_cpu(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols) {
  over_rows(rows, cols, [&](int64_t r) { rk().softmax_bwd_row(y + r * cols, dy + r * cols, dx + r * cols, cols); });
}

void log_softmax_forward_cpu(const float* x, float* y, int64_t rows, int64_t cols) {
  over_rows(rows, cols, [&](int64_t r) { rk().log_softmax_row(x + r * cols, y + r * cols, cols); });
}

void log_softmax_backward_cpu(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols) {
  over_rows(rows, cols, [&](int64_t r) { rk().log_softmax_bwd_row(y + r * cols, dy + r * cols, dx + r * cols, cols); });
}

void layernorm_forward_cpu(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,
                           int64_t rows, int64_t C, float eps, const float* resid, int64_t resid_rows) {
  const int64_t grain = std::max<int64_t>(1, ELEM_GRAIN / std::max<int64_t>(C, 1));
  parallel_for_range(rows, grain, [&](int64_t lo, int64_t hi) {
    const ResidualRows res{resid, C, resid_rows, lo};
    rk().layernorm_rows(x + lo * C, C, w, b, y + lo * C, C, mean + lo, rstd + lo, hi - lo, C, eps, resid ? &res : nullptr);
  });
}

void layernorm_rows_cpu(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, float* mean,
                        float* rstd, int64_t rows, int64_t C, float eps, const ResidualRows* resid) {
  rk().layernorm_rows(x, ldx, w, b, y, ldy, mean, rstd, rows, C, eps, resid);
}

void layernorm_backward_cpu(const float* x, const float* w, const float* mean, const float* rstd, const float* dy,
                            float* dx, float* dw, float* db, int64_t rows, int64_t C, bool accumulate) {
  // dw and db are sums over rows: each thread sums its rows privately, then the parts are added.
  const int64_t threads = get_num_threads();
  const int64_t chunks = std::min<int64_t>(threads, std::max<int64_t>(1, rows * C / ELEM_GRAIN));
  const bool partial = dw || db;
  std::vector<float> parts(partial ? static_cast<size_t>(chunks * 2 * C) : 0, 0.0f);
  const int64_t step = (rows + chunks - 1) / chunks;
  // Rows in groups that stay in L1: each row's dx, then the group's parameter sums column-wise.
  constexpr int64_t GROUP = 16;
  parallel_for(chunks, [&](int64_t c) {
    float* pw = partial && dw ? parts.data() + c * 2 * C : nullptr;
    float* pb = partial && db ? parts.data() + c * 2 * C + C : nullptr;
    const int64_t end = std::min(rows, (c + 1) * step);
    for (int64_t r0 = c * step; r0 < end; r0 += GROUP) {
      const int64_t r1 = std::min(end, r0 + GROUP);
      for (int64_t r = r0; dx && r < r1; r++)
        rk().layernorm_bwd_row(x + r * C, w, mean[r], rstd[r], dy + r * C, dx + r * C, C, accumulate);
      if (partial) rk().layernorm_bwd_params(x + r0 * C, mean + r0, rstd + r0, dy + r0 * C, r1 - r0, C, pw, pb);
    }
  });
  for (int64_t c = 0; c < chunks && partial; c++) {
    for (int64_t i = 0; i < C; i++) {
      if (dw) dw[i] += parts[c * 2 * C + i];
      if (db) db[i] += parts[c * 2 * C + C + i];
    }
  }
}

void gelu_forward_range_cpu(const float* x, float* y, int64_t n, float beta) {
  rk().gelu_fwd_range(x, y, n, beta);
}

void stage_combine_range_cpu(float* c, const float* v, const float* r, const float* extra, int64_t nsum, int64_t stride,
                             float scale, float beta, int64_t n) {
  rk().stage_combine_range(c, v, r, extra, nsum, stride, scale, beta, n);
}

void gelu_backward_range_cpu(const float* x, const float* dy, float* dx, int64_t n, bool accumulate) {
  rk().gelu_bwd_range(x, dy, dx, n, accumulate);
}

void layernorm_row_cpu(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd, int64_t C,
                       float eps) {
  rk().layernorm_row(x, w, b, y, mean, rstd, C, eps);
}

void layernorm_backward_row_cpu(const float* x, const float* w, float mean, float rstd, const float* dy, float* dx,
                                int64_t C, bool accumulate) {
  rk().layernorm_bwd_row(x, w, mean, rstd, dy, dx, C, accumulate);
}

void layernorm_resid_backward_row_cpu(const float* x, const float* res, float mean, float rstd, const float* dy,
                                      float* dx, bool accumulate, double* sum, bool first, int64_t C) {
  rk().layernorm_resid_bwd_row(x, res, mean, rstd, dy, dx, accumulate, sum, first, C);
}

float softmax_lse_row_cpu(const float* x, float* y, int64_t n) { return rk().softmax_lse_row(x, y, n); }

void softmax_lse_cols_cpu(float* s, int64_t ld, int64_t rows, int64_t cols, float* lse, const float* max,
                          float* inv_sum) {
  rk().softmax_lse_cols(s, ld, rows, cols, lse, max, inv_sum);
}

void softmax_backward_cols_cpu(const float* p, float* d, int64_t ld, int64_t rows, int64_t cols) {
  rk().softmax_bwd_cols(p, d, ld, rows, cols);
}

void small_gemm_rows_cpu(bool transA, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                         const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  rk().small_gemm(transA, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace duat
