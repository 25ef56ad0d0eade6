// attention.cpp: multi-head scaled-dot-product self-attention as one op, for N branches at once.
//   qkv: (B, T, N*3C); branch n owns columns n*3C .. n*3C+3C-1 laid out [Q | K | V], head h of Q
//        at columns h*D .. h*D+D-1 within it (timm's layout when N = 1)
//   out: (B, T, N*C), branch n at columns n*C .. n*C+C-1
//   P = softmax(Q K^T / sqrt(D)) per (n, b, h), saved (B, N*H, T, T) for backward
// Every (n, b, h) triple is one task on the pool; its products read Q, K, V in place
// (ld = N*3C). Backward ACCUMULATES into dqkv (tasks write disjoint columns: no collisions).
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
  int64_t B, T, C, H, D, N;
  int64_t ld_in() const { return N * 3 * C; }
  int64_t ld_out() const { return N * C; }
  int64_t tasks() const { return B * N * H; }
  // Task t is (b, n, h) with h fastest; its probabilities sit at t * T * T in (B, N*H, T, T).
  int64_t in_offset(int64_t t) const { return (t / (N * H)) * T * ld_in() + ((t / H) % N) * 3 * C + (t % H) * D; }
  int64_t out_offset(int64_t t) const { return (t / (N * H)) * T * ld_out() + ((t / H) % N) * C + (t % H) * D; }
};

AttnDims attention_dims(const Tensor& qkv, int64_t heads, int64_t branches, const char* op) {
  check_f32(qkv, op, "qkv");
  check_dim(qkv, 3, op, "qkv (B, T, N*3C)");
  check(branches >= 1, ERROR_ARGUMENT, std::string(op) + ": branches must be at least 1");
  const int64_t width = qkv->shape[2];
  check(width % (3 * branches) == 0, ERROR_SHAPE,
        std::string(op) + ": the last dimension of qkv (" + std::to_string(width) + ") is not " +
            (branches == 1 ? std::string("3C") : std::to_string(branches) + " branches x 3C"));
  const int64_t C = width / (3 * branches);
  check(heads >= 1 && C % heads == 0, ERROR_SHAPE,
        std::string(op) + ": " + std::to_string(heads) + " heads do not divide the width " + std::to_string(C));
  return {qkv->shape[0], qkv->shape[1], C, heads, C / heads, branches};
}

// out (B, T, N*C) when non-null; probs (B, N*H, T, T) when non-null, else each task's
// probabilities live in a per-thread scratch buffer (inference keeps no T x T matrices).
void attention_forward_cpu(const AttnDims& s, const float* qkv, float* probs, float* out) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.D));
  const int64_t ld = s.ld_in();
  parallel_for(s.tasks(), [&](int64_t task) {
    const float* q = qkv + s.in_offset(task);
    thread_local std::vector<float> scratch;
    if (!probs) scratch.resize(static_cast<size_t>(s.T * s.T));
    float* p = probs ? probs + task * s.T * s.T : scratch.data();
    sgemm(false, true, s.T, s.T, s.D, scale, q, ld, q + s.C, ld, 0.0f, p, s.T, false);
    softmax_forward_cpu(p, p, s.T, s.T);
    if (out) sgemm(false, false, s.T, s.D, s.T, 1.0f, p, s.T, q + 2 * s.C, ld, 0.0f, out + s.out_offset(task), s.ld_out(), false);
  });
}

}  // namespace

Tensor attention(const Tensor& qkv, int64_t heads, int64_t branches) {
  const AttnDims s = attention_dims(qkv, heads, branches, "attention");
  const Tensor x = contiguous_data(qkv);
  Tensor out = empty({s.B, s.T, s.N * s.C});
  if (!any_requires_grad({qkv})) {
    attention_forward_cpu(s, x->f32(), nullptr, out->f32());
    return out;
  }
  // Backward reads the probabilities: keep them, (B, N*H, T, T).
  Tensor probs = empty({s.B, s.N * s.H, s.T, s.T});
  attention_forward_cpu(s, x->f32(), probs->f32(), out->f32());
  Tensor sx = detach(x);
  return record(out, "attention", {qkv}, [s, sx, probs](const Tensor& dout, Grads& g) {
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.D));
    const float* x = sx->f32();
    const float* pp = probs->f32();
    const float* pdo = dout->f32();
    float* dx = g.f32(0);
    const int64_t ld = s.ld_in(), ldo = s.ld_out();
    parallel_for(s.tasks(), [&](int64_t task) {
      const float* q = x + s.in_offset(task);
      const float* k = q + s.C;
      const float* v = q + 2 * s.C;
      float* dq = dx + s.in_offset(task);
      float* dk = dq + s.C;
      float* dv = dq + 2 * s.C;
      const float* p = pp + task * s.T * s.T;
      const float* dO = pdo + s.out_offset(task);
      thread_local std::vector<float> dp_buf, ds_buf;
      dp_buf.resize(s.T * s.T);
      ds_buf.assign(s.T * s.T, 0.0f);
      float* dp = dp_buf.data();
      float* ds = ds_buf.data();
      sgemm(true, false, s.T, s.D, s.T, 1.0f, p, s.T, dO, ldo, 1.0f, dv, ld, false);   // dV += P^T dO
      sgemm(false, true, s.T, s.T, s.D, 1.0f, dO, ldo, v, ld, 0.0f, dp, s.T, false);  // dP = dO V^T
      softmax_backward_cpu(p, dp, ds, s.T, s.T);                                     // dS = P (dP - rowsum)
      sgemm(false, false, s.T, s.D, s.T, scale, ds, s.T, k, ld, 1.0f, dq, ld, false);  // dQ += s dS K
      sgemm(true, false, s.T, s.D, s.T, scale, ds, s.T, q, ld, 1.0f, dk, ld, false);   // dK += s dS^T Q
    });
  });
}

Tensor attention_probs(const Tensor& qkv, int64_t heads, int64_t branches) {
  const AttnDims s = attention_dims(qkv, heads, branches, "attentionProbs");
  const Tensor x = contiguous_data(qkv);
  Tensor probs = empty({s.B, s.N * s.H, s.T, s.T});
  attention_forward_cpu(s, x->f32(), probs->f32(), nullptr);
  return probs;
}

}  // namespace duat
