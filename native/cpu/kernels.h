// kernels.h: CPU row kernels besides GEMM. All pointers contiguous float32; kernels trust their
// arguments (ops validate). Backward kernels ACCUMULATE into their d* outputs (+=).
#pragma once
#include <cstdint>

namespace duat {

// y[i] = gelu(x[i]);   dx[i] += dy[i] * gelu'(x[i])
void gelu_forward_cpu(const float* x, float* y, int64_t n);
void gelu_backward_cpu(const float* x, const float* dy, float* dx, int64_t n);

// acc[i] += x[i] in fp64, on the calling thread (a reduction's column sums).
void accumulate_f64_cpu(const float* x, double* acc, int64_t n);
// One row of the LayerNorm-affine fold, on the calling thread: wf = w * g, returning sum(w * beta);
// and of its backward: dw = d * g + db * beta, dg += d * w, dbeta += db * w (no arrays overlap).
float fold_affine_row_cpu(const float* w, const float* g, const float* beta, float* wf, int64_t C);
void fold_affine_backward_row_cpu(const float* d, const float* w, const float* g, const float* beta, float db,
                                  float* dw, float* dg, float* dbeta, int64_t C);
// acc[j] += sum over r < rows of x[r * ld + j] in fp64, rows in order (the same sums as
// accumulate_f64_cpu row by row), on the calling thread.
void accumulate_rows_f64_cpu(const float* x, int64_t ld, int64_t rows, double* acc, int64_t n);
// GELU's gradient with its bias sums over `rows` rows of `cols` floats, `ld` apart: dx = dy *
// gelu'(x) (dx may be dy), and sums[j] += sum over the rows of dx[r * ld + j] in fp64, rows in order
// (no sums when null); in groups of rows that stay in L1 between the two. On the calling thread.
void gelu_backward_rows_cpu(const float* x, const float* dy, float* dx, int64_t ld, int64_t rows, int64_t cols,
                            double* sums);
// out[j] (+)= sum over p < parts, in order, of part[p * n + j] (fp64, rounded once): per-block sums
// added up the same way whatever the number of threads that made them.
void sum_parts_f64_cpu(const double* part, int64_t parts, int64_t n, float* out, bool accumulate);
// sum of x[i]^2 in fp64, on the calling thread (a gradient norm's part).
double sum_squares_f64_cpu(const float* x, int64_t n);

// An AdamW step's constants (backend.h, AdamWTensor) and one step over n elements on the calling
// thread: p, m, v updated in place from g * gs (dm::adamw_element).
struct AdamWConsts {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, decay, step_size, inv_sqrt_bc2;
};
void adamw_range_cpu(float* p, const float* g, float* m, float* v, int64_t n, float gs, const AdamWConsts& c);

// Over rows of length `cols`: y = softmax(x) (max subtracted first, fp32 sums).
void softmax_forward_cpu(const float* x, float* y, int64_t rows, int64_t cols);
// dx += y * (dy - sum(dy * y))
void softmax_backward_cpu(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols);
// One row, on the calling thread (for callers that already split work over the pool):
// y = softmax(x), returning the row's log-sum-exp.
float softmax_lse_row_cpu(const float* x, float* y, int64_t n);
// Attention's probabilities kept transposed (keys x queries), on the calling thread: s is `rows`
// x `cols` with row stride ld, ld >= cols rounded up to 16 (the padding columns are computed and
// never read). In place, per column j: s = softmax(s), lse[j] = its log-sum-exp (lse may be
// null; max, when not null, holds each column's maximum, which is then not looked for; with
// inv_sum, the columns are left unnormalised, exp(s - max), and inv_sum[j] = 1 / their sum);
// d = p * (d - sum_i p * d).
void softmax_lse_cols_cpu(float* s, int64_t ld, int64_t rows, int64_t cols, float* lse, const float* max = nullptr,
                          float* inv_sum = nullptr);
void softmax_backward_cols_cpu(const float* p, float* d, int64_t ld, int64_t rows, int64_t cols);
// y = gelu(x) (+ beta * y); dx (+)= dy * gelu'(x) (n elements); one LayerNorm row forward, and its dx (+=).
void gelu_forward_range_cpu(const float* x, float* y, int64_t n, float beta = 0.0f);
void gelu_backward_range_cpu(const float* x, const float* dy, float* dx, int64_t n, bool accumulate);
void layernorm_row_cpu(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd, int64_t C,
                       float eps);
// A residual added to LayerNorm's input rows: x's row r (of a call's rows) gets row (first + r) %
// count of `rows` (ld apart).
struct ResidualRows {
  const float* rows;
  int64_t ld, count, first;
};
// `rows` LayerNorm rows on the calling thread, x's ldx apart into y's ldy apart (y may be x), mean
// and rstd one per row: each row as layernorm_row_cpu makes it. With a residual, x + resid is
// written into y's row and normalised there in place: the bits layernorm_row_cpu makes of that sum.
void layernorm_rows_cpu(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, float* mean,
                        float* rstd, int64_t rows, int64_t C, float eps, const ResidualRows* resid = nullptr);
// One row of the stage epilogue: c = x + scale * (v + sum_j extra[j * stride]) with x = r
// (dm::stage_combine), plus beta * c when beta is not 0; c may be v.
void stage_combine_range_cpu(float* c, const float* v, const float* r, const float* extra, int64_t nsum, int64_t stride,
                             float scale, float beta, int64_t n);
void layernorm_backward_row_cpu(const float* x, const float* w, float mean, float rstd, const float* dy, float* dx,
                                int64_t C, bool accumulate);
// One row of a weightless LayerNorm of x + res, backward: dx (+)= (accumulate) its gradient, and
// sum = (first) or += it in fp64 (the residual's gradient over the row sets); dx and sum may be null.
void layernorm_resid_backward_row_cpu(const float* x, const float* res, float mean, float rstd, const float* dy,
                                      float* dx, bool accumulate, double* sum, bool first, int64_t C);
// y = x - max - log(sum(exp(x - max)))
void log_softmax_forward_cpu(const float* x, float* y, int64_t rows, int64_t cols);
// dx += dy - exp(y) * sum(dy)
void log_softmax_backward_cpu(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols);

// LayerNorm over rows of C: y = (x - mean) * rstd * w + b, rstd = 1/sqrt(var + eps) (biased
// variance, two-pass in fp32). w and b may be null (then 1 and 0). mean and rstd: (rows). With a
// residual (rows of C), x's row r is taken as x + resid's row r % resid_rows (layernorm_rows_cpu).
void layernorm_forward_cpu(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,
                           int64_t rows, int64_t C, float eps, const float* resid = nullptr, int64_t resid_rows = 0);
// dx (+)= rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w (written when not
// `accumulate`); dw += sum dy*xhat; db += sum dy. dx, dw, db may each be null (not wanted).
void layernorm_backward_cpu(const float* x, const float* w, const float* mean, const float* rstd, const float* dy,
                            float* dx, float* dw, float* db, int64_t rows, int64_t C, bool accumulate);

// C = alpha op(A) B + beta C without packing, B row-major, for small products (sgemm decides and
// lays B out first). Single-threaded; the AVX2 and portable paths (AVX-512 has its own in gemm.cpp).
void small_gemm_rows_cpu(bool transA, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                         const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace duat
