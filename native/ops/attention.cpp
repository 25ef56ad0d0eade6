// attention.cpp: multi-head scaled-dot-product self-attention as one op.
//   qkv: (B, T, 3C) = [Q | K | V]; head h of Q is columns h*D .. h*D+D-1 (timm's layout)
//   out: (B, T, C);  P = softmax(Q K^T / sqrt(D)) per (b, h), saved (B, H, T, T) for backward
// Every (b, h) pair is one task on the pool; its products read Q, K, V in place (ld = 3C).
// Backward ACCUMULATES into dqkv (tasks write disjoint columns, so no two tasks collide).
#include <cmath>
#include <string>
#include <vector>

#include "../core/parallel.h"
#include "../cpu/gemm.h"
#include "../cpu/kernels.h"
#include "ops.h"

namespace duat {

namespace {

struct AttnDims {
  int64_t B, T, C, H, D;
};

AttnDims attention_dims(const Tensor& qkv, int64_t heads, const char* op) {
  check_f32(qkv, op, "qkv");
  check_dim(qkv, 3, op, "qkv (B, T, 3C)");
  const int64_t c3 = qkv->shape[2];
  check(c3 % 3 == 0, ERROR_SHAPE, std::string(op) + ": the last dimension of qkv (" + std::to_string(c3) + ") is not 3C");
  const int64_t C = c3 / 3;
  check(heads >= 1 && C % heads == 0, ERROR_SHAPE,
        std::string(op) + ": " + std::to_string(heads) + " heads do not divide the width " + std::to_string(C));
  return {qkv->shape[0], qkv->shape[1], C, heads, C / heads};
}

// probs (B, H, T, T) and, when out is non-null, out (B, T, C).
void attention_forward_cpu(const AttnDims& s, const float* qkv, float* probs, float* out) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.D));
  parallel_for(s.B * s.H, [&](int64_t task) {
    const int64_t b = task / s.H, h = task % s.H;
    const float* q = qkv + b * s.T * 3 * s.C + h * s.D;
    float* p = probs + task * s.T * s.T;
    sgemm(false, true, s.T, s.T, s.D, scale, q, 3 * s.C, q + s.C, 3 * s.C, 0.0f, p, s.T, false);
    softmax_forward_cpu(p, p, s.T, s.T);
    if (out) sgemm(false, false, s.T, s.D, s.T, 1.0f, p, s.T, q + 2 * s.C, 3 * s.C, 0.0f,
                   out + b * s.T * s.C + h * s.D, s.C, false);
  });
}

}  // namespace

Tensor attention(const Tensor& qkv, int64_t heads) {
  const AttnDims s = attention_dims(qkv, heads, "attention");
  const Tensor x = contiguous_data(qkv);
  Tensor out = empty({s.B, s.T, s.C});
  Tensor probs = empty({s.B, s.H, s.T, s.T});
  attention_forward_cpu(s, x->f32(), probs->f32(), out->f32());
  if (!any_requires_grad({qkv})) return out;
  Tensor sx = detach(x);
  return record(out, "attention", {qkv}, [s, sx, probs](const Tensor& dout, Grads& g) {
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.D));
    const float* x = sx->f32();
    const float* pp = probs->f32();
    const float* pdo = dout->f32();
    float* dx = g.f32(0);
    parallel_for(s.B * s.H, [&](int64_t task) {
      const int64_t b = task / s.H, h = task % s.H;
      const int64_t ld = 3 * s.C;
      const float* q = x + b * s.T * ld + h * s.D;
      const float* k = q + s.C;
      const float* v = q + 2 * s.C;
      float* dq = dx + b * s.T * ld + h * s.D;
      float* dk = dq + s.C;
      float* dv = dq + 2 * s.C;
      const float* p = pp + task * s.T * s.T;
      const float* dO = pdo + b * s.T * s.C + h * s.D;
      thread_local std::vector<float> dp_buf, ds_buf;
      dp_buf.resize(s.T * s.T);
      ds_buf.assign(s.T * s.T, 0.0f);
      float* dp = dp_buf.data();
      float* ds = ds_buf.data();
      sgemm(true, false, s.T, s.D, s.T, 1.0f, p, s.T, dO, s.C, 1.0f, dv, ld, false);   // dV += P^T dO
      sgemm(false, true, s.T, s.T, s.D, 1.0f, dO, s.C, v, ld, 0.0f, dp, s.T, false);  // dP = dO V^T
      softmax_backward_cpu(p, dp, ds, s.T, s.T);                                     // dS = P (dP - rowsum)
      sgemm(false, false, s.T, s.D, s.T, scale, ds, s.T, k, ld, 1.0f, dq, ld, false);  // dQ += s dS K
      sgemm(true, false, s.T, s.D, s.T, scale, ds, s.T, q, ld, 1.0f, dk, ld, false);   // dK += s dS^T Q
    });
  });
}

Tensor attention_probs(const Tensor& qkv, int64_t heads) {
  const AttnDims s = attention_dims(qkv, heads, "attentionProbs");
  const Tensor x = contiguous_data(qkv);
  Tensor probs = empty({s.B, s.H, s.T, s.T});
  attention_forward_cpu(s, x->f32(), probs->f32(), nullptr);
  return probs;
}

}  // namespace duat
