// attention.cpp: multi-head scaled-dot-product self-attention as one op, for N branches at once.
//   qkv: (B, T, N*3C); branch n owns columns n*3C .. n*3C+3C-1 laid out [Q | K | V], head h of Q
//        at columns h*D .. h*D+D-1 within it (timm's layout when N = 1)
//   out: (B, T, N*C), branch n at columns n*C .. n*C+C-1
//   lse: (B, N, H, T), the log-sum-exp of every row of scores, all that backward keeps: it
//        rebuilds the probabilities from it (flash-style), so no T x T matrix outlives a step.
// Backward writes dqkv (every element belongs to exactly one (b, n, h)) and ACCUMULATES it into
// the input's gradient.
#include <cmath>
#include <string>

#include "ops.h"

namespace duat {

namespace {

dm::AttnLayout attention_layout(const Tensor& qkv, int64_t heads, int64_t branches, const char* op) {
  check_f32(qkv, op, "qkv");
  check_dim(qkv, 3, op, "qkv (B, T, N*3C)");
  DUAT_CHECK(branches >= 1, ERROR_ARGUMENT, std::string(op) + ": branches must be at least 1");
  const int64_t width = qkv->shape[2];
  DUAT_CHECK(width % (3 * branches) == 0, ERROR_SHAPE,
             std::string(op) + ": the last dimension of qkv (" + std::to_string(width) + ") is not " +
                 (branches == 1 ? std::string("3C") : std::to_string(branches) + " branches x 3C"));
  const int64_t C = width / (3 * branches);
  DUAT_CHECK(heads >= 1 && C % heads == 0, ERROR_SHAPE,
             std::string(op) + ": " + std::to_string(heads) + " heads do not divide the width " + std::to_string(C));
  return {qkv->shape[1], C, branches, heads, C / heads};
}

}  // namespace

Tensor attention(const Tensor& qkv, int64_t heads, int64_t branches, const std::shared_ptr<GeluLink>& link) {
  const dm::AttnLayout L = attention_layout(qkv, heads, branches, "attention");
  const int64_t B = qkv->shape[0];
  const Device dev = qkv->device;
  const Tensor x = contiguous_data(qkv);
  Tensor out = empty({B, L.T, L.N * L.C}, DTYPE_F32, dev);
  const bool grad = any_requires_grad({qkv});
  const Tensor lse = grad ? empty({B, L.N, L.H, L.T}, DTYPE_F32, dev) : nullptr;
  if (B && L.T) backend(dev).attention_forward(L, B, x->ptr_f32(), out->ptr_f32(), lse ? lse->ptr_f32() : nullptr);
  if (!grad) return out;
  const Tensor sx = detach(x), so = detach(out);
  return record(out, "attention", {qkv}, [L, B, sx, so, lse, link](const Tensor& dout, Grads& g) {
    const Device dev = sx->device;
    const Tensor delta = empty({B, L.N, L.H, L.T}, DTYPE_F32, dev);
    bool fresh = false;
    Tensor& slot = g.contiguous_slot_for_write(0, &fresh);
    const Tensor dqkv = fresh ? slot : empty(sx->shape, DTYPE_F32, dev);
    // The bias gradient only where dqkv is the whole of qkv's gradient.
    const Tensor db = link && fresh && B && L.T ? empty({L.N, 3 * L.C}, DTYPE_F32, dev) : nullptr;
    if (db) {
      backend(dev).attention_backward_bias(L, B, dout->ptr_f32(), sx->ptr_f32(), so->ptr_f32(), lse->ptr_f32(),
                                           delta->ptr_f32(), dqkv->ptr_f32(), db->ptr_f32());
      link->db = db;
    } else if (B && L.T) {
      backend(dev).attention_backward(L, B, dout->ptr_f32(), sx->ptr_f32(), so->ptr_f32(), lse->ptr_f32(),
                                      delta->ptr_f32(), dqkv->ptr_f32());
    }
    if (!fresh) add_into(slot, dqkv);
  });
}

Tensor attention_first(const Tensor& qkv, int64_t heads, int64_t branches, int64_t queries) {
  const dm::AttnLayout L = attention_layout(qkv, heads, branches, "attentionFirst");
  DUAT_CHECK(queries >= 1 && queries <= L.T, ERROR_ARGUMENT,
             "attentionFirst: queries must be 1 to " + std::to_string(L.T) + " (the tokens), got " + std::to_string(queries));
  DUAT_CHECK(!any_requires_grad({qkv}), ERROR_STATE,
             "attentionFirst: computes no gradient; call it without one (noGrad) or on values that need none");
  const int64_t B = qkv->shape[0];
  Backend& be = backend(qkv->device);
  if (!be.attention_first_queries()) return contiguous(slice(attention(qkv, heads, branches), 1, 0, queries, 1));
  const Tensor x = contiguous_data(qkv);
  Tensor out = empty({B, queries, L.N * L.C}, DTYPE_F32, qkv->device);
  if (B) be.attention_forward_first(L, B, queries, x->ptr_f32(), out->ptr_f32());
  return out;
}

Tensor attention_probs(const Tensor& qkv, int64_t heads, int64_t branches) {
  const dm::AttnLayout L = attention_layout(qkv, heads, branches, "attentionProbs");
  const int64_t B = qkv->shape[0];
  const Tensor x = contiguous_data(qkv);
  Tensor probs = empty({B, L.N * L.H, L.T, L.T}, DTYPE_F32, qkv->device);
  if (B && L.T) backend(qkv->device).attention_probs(L, B, x->ptr_f32(), probs->ptr_f32());
  return probs;
}

}  // namespace duat
