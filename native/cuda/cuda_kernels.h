// cuda_kernels.h: duat's CUDA kernels and their launchers. Few kernels, each general enough
// for every use in the model: a tiled matrix product (fp32, or tensor cores in TF32 or BF16
// with float32 accumulation) with branch-batched strides and fused epilogues; one flash-style
// attention kernel over (batch, branch, head); one LayerNorm kernel; elementwise and reduction
// kernels; a multi-tensor AdamW. Per-element math lives in device_math.h.
// Launchers pick grid sizes, count the launch (launch_count) and check it at once: failures throw
// duat::Error with ERROR_DEVICE (ERROR_OUT_OF_MEMORY when the device is out of memory).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace duat {
namespace cuda {

enum Precision : int { PRECISION_FP32 = 0, PRECISION_TF32 = 1, PRECISION_BF16 = 2 };
const char* precision_name(Precision p);
// Tensor-core precisions need sm_80 or newer; older devices fall back to fp32 (this says which).
Precision effective_precision(Precision p);

// Throws duat::Error naming `what` when e is not cudaSuccess.
void check_cuda(cudaError_t e, const char* what);
// Kernel launches since the process started (every launcher adds its launches).
int64_t launch_count();

// ---- matrix product -------------------------------------------------------------------------
// For every batch index z < batch:
//   C(m, n) = epilogue(alpha * sum_k A(m, k) B(n, k) + bias(n)) [+ beta * C(m, n) before]
// with A(m, k) = A[z*a_batch + m*a_m + k*a_k], B(n, k) = B[z*b_batch + n*b_n + k*b_k] and
// C(m, n) at C[z*c_batch + m*c_m + n]. Any of the four layouts (A or A^T, B or B^T) is a choice
// of strides, so forward and backward products share one kernel.
enum Epilogue : int {
  EPILOGUE_NONE = 0,
  EPILOGUE_GELU = 1,   // C = gelu(v); pre-activation v written to `aux` when non-null
  EPILOGUE_STAGE = 2,  // C = resid(m, n) + scale * (v + sum_{j<nsum} extra[j*extra_batch + m*c_m + n])
};
struct GemmArgs {
  int M = 0, N = 0, K = 0, batch = 1;
  const float* A = nullptr;
  int64_t a_m = 0, a_k = 1, a_batch = 0;
  const float* B = nullptr;
  int64_t b_n = 0, b_k = 1, b_batch = 0;
  float* C = nullptr;
  int64_t c_m = 0, c_batch = 0;
  const float* bias = nullptr;  // bias[z*bias_batch + n]
  int64_t bias_batch = 0;
  float alpha = 1.0f, beta = 0.0f;
  Epilogue epilogue = EPILOGUE_NONE;
  float* aux = nullptr;  // GELU: pre-activation, same layout as C
  const float* resid = nullptr;  // STAGE: resid(m, n) at resid[m*c_m + n]
  const float* extra = nullptr;  // STAGE: nsum tensors laid out like C, extra_batch apart
  int nsum = 0;
  int64_t extra_batch = 0;
  float scale = 1.0f;
};
void gemm(const GemmArgs& g, Precision p, cudaStream_t s);

// ---- LayerNorm over the last dimension C -----------------------------------------------------
// y[r] = norm(x[r] + (resid ? resid[r % resid_rows] : 0)) * gamma + beta, gamma/beta optional
// ((C) each); mean/rstd (rows) written when non-null. C <= 1024.
void layernorm_forward(const float* x, const float* resid, int64_t resid_rows, const float* gamma, const float* beta,
                       float* y, float* mean, float* rstd, int64_t rows, int64_t C, float eps, cudaStream_t s);
// dx[r] (+)= LayerNorm backward of the row, its input rebuilt as x[r] + resid[r % resid_rows]
// (resid optional) from mean and rstd; accumulates into dx when `accumulate`. dgamma and dbeta
// ((C) each) are ACCUMULATED when non-null (clear them first); they need resid == nullptr.
void layernorm_backward(const float* dy, const float* x, const float* resid, int64_t resid_rows, const float* mean,
                        const float* rstd, const float* gamma, float* dx, float* dgamma, float* dbeta, int64_t rows,
                        int64_t C, bool accumulate, cudaStream_t s);

// ---- attention --------------------------------------------------------------------------------
// qkv (B, T, N*3C) -> out (B, T, N*C): softmax(Q K^T / sqrt(D)) V for every (b, n, h), online
// softmax over key tiles, no T x T matrix in memory. lse (B, N, H, T) written when non-null
// (training keeps it for backward). D in {8, 16, 32, 64, 128}.
void attention_forward(const float* qkv, float* out, float* lse, int64_t B, int64_t T, int64_t N, int64_t H,
                       int64_t D, cudaStream_t s);
// dqkv (B, T, N*3C) (written, not accumulated) from dout, qkv, out and lse; `delta` is scratch
// of (B, N, H, T) floats. Two launches: dQ with delta, then dK and dV.
void attention_backward(const float* dout, const float* qkv, const float* out, const float* lse, float* delta,
                        float* dqkv, int64_t B, int64_t T, int64_t N, int64_t H, int64_t D, cudaStream_t s);

// ---- elementwise and reductions -----------------------------------------------------------------
// dx = dy * gelu'(x) (n elements).
void gelu_backward(const float* dy, const float* x, float* dx, int64_t n, cudaStream_t s);
// out[z*cols + c] (+)= sum_r x[z*x_batch + r*cols + c] for z < batch: bias gradients.
void sum_rows(const float* x, float* out, int64_t batch, int64_t rows, int64_t cols, int64_t x_batch, bool accumulate,
              cudaStream_t s);
// Mean cross-entropy of logits (B, K) against labels (B), with label smoothing eps (the target
// is (1 - eps) one-hot + eps / K): loss (1 float) and dlogits (B, K).
void cross_entropy(const float* logits, const int32_t* labels, float* loss, float* dlogits, int64_t B, int64_t K,
                   float smoothing, cudaStream_t s);
// Patch embedding with class token and positions: images (B, ch, S, S) -> x (B, T1, C). The
// weight of input k = (ch, py, px) and channel c is patch_w[k*w_k + c*w_c]: (w_k, w_c) = (C, 1)
// for the weight transposed to (ch*P*P, C), which a warp reads coalesced (inference), or (1,
// ch*P*P) for the convolution's own layout (training, where the weight changes every step).
void embed_forward(const float* images, const float* patch_w, int64_t w_k, int64_t w_c, const float* patch_b,
                   const float* cls, const float* pos, float* x, int64_t B, int64_t channels, int64_t S, int64_t P,
                   int64_t C, cudaStream_t s);
// logits (B, K) = LayerNorm(x[:, 0]) (affine) @ head_w^T + head_b, x (B, T1, C).
void head_forward(const float* x, const float* norm_w, const float* norm_b, const float* head_w,
                  const float* head_b, float* logits, int64_t B, int64_t T1, int64_t C, int64_t K, float eps,
                  cudaStream_t s);

// ---- training helpers ----------------------------------------------------------------------------
// An affine LayerNorm folded into the linear layer after it, per branch n:
//   wf[n] = w[n] diag(g[n]),  bf[n] = w[n] beta[n] + b[n]      w (N, O, C), b (N, O), g, beta (N, C)
void fold_affine_forward(const float* w, const float* b, const float* g, const float* beta, float* wf, float* bf,
                         int64_t N, int64_t O, int64_t C, cudaStream_t s);
// Its backward (all outputs written): dw = dwf diag(g) + dbf beta^T, db = dbf,
// dg = sum_o dwf * w, dbeta = sum_o dbf[o] w[o].
void fold_affine_backward(const float* w, const float* g, const float* beta, const float* dwf, const float* dbf,
                          float* dw, float* db, float* dg, float* dbeta, int64_t N, int64_t O, int64_t C,
                          cudaStream_t s);
// fc2 (N, C, M) side by side as (C, N*M) and its biases summed over branches, and back:
// dw[n, c, m] = dcat[c, n*M + m], db[n, c] = scale * dbsum[c].
void branch_concat_forward(const float* w, const float* b, float* cat, float* bsum, int64_t N, int64_t C, int64_t M,
                           cudaStream_t s);
void branch_concat_backward(const float* dcat, const float* dbsum, float scale, float* dw, float* db, int64_t N,
                            int64_t C, int64_t M, cudaStream_t s);
// The stage's residual paths in backward: da[n] = dv[n] + scale * dy, dx += sum_n dv[n].
void branch_residual_backward(const float* dv, const float* dy, float scale, float* da, float* dx, int64_t N,
                              int64_t rows, int64_t C, cudaStream_t s);
// Gradients of the patch embedding from dx (B, T1, C): dw in the convolution's layout (C, ch*P*P),
// dbias, dcls and dpos written.
void embed_backward(const float* images, const float* dx, float* dw, float* dbias, float* dcls, float* dpos, int64_t B,
                    int64_t channels, int64_t S, int64_t P, int64_t C, cudaStream_t s);
// dst[r*dst_stride + c] = src[r*src_stride + c] for r < rows, c < cols.
void copy_rows(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int64_t rows, int64_t cols,
               cudaStream_t s);

// ---- optimizer ----------------------------------------------------------------------------------
// One AdamW step over many tensors in one launch (32 tensors per launch; the table travels as
// the kernel's parameter). Each tensor has its own learning rate and weight decay (groups).
struct AdamWTensor {
  float* param;
  const float* grad;
  float* m;
  float* v;
  int64_t n;
  float lr;
  float weight_decay;
};
// Gradients are multiplied by grad_scale first (gradient-norm clipping).
void adamw_multi(const std::vector<AdamWTensor>& tensors, float beta1, float beta2, float eps, int64_t step,
                 float grad_scale, cudaStream_t s);
// out (1 float, written) = sum of squares of every tensor's elements: the squared global norm.
void sum_of_squares(const std::vector<std::pair<const float*, int64_t>>& tensors, float* out, cudaStream_t s);

}  // namespace cuda
}  // namespace duat
