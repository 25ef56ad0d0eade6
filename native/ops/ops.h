// ops.h: every differentiable op. Each validates its arguments (shapes, dtypes, devices),
// computes its forward and records its backward beside it (see the op's .cpp). Inputs may be
// views; outputs are contiguous unless the op is a view op (reshape, permute, slice).
// Shape letters: B batch, T tokens, C channels, H heads, D head size, N branches.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/autograd.h"
#include "../core/tensor.h"

namespace duat {

// ---- elementwise.cpp: broadcasting arithmetic (NumPy rules) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& a, float s);
Tensor mul_scalar(const Tensor& a, float s);

// ---- linalg.cpp ----
// (..., M, K) @ (..., K, N): equal batch shapes, or b two-dimensional (shared by the batch).
Tensor matmul(const Tensor& a, const Tensor& b);
// x (..., in) @ w(out, in)^T + bias(out); bias may be null.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias);

// ---- reduce.cpp ----
// Sum / mean over `dims` (empty: all); keepdim keeps them as size 1. fp64 accumulation.
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim);
// Index of the largest value along the last dimension (int32, no gradient).
Tensor argmax(const Tensor& x);

// ---- shape.cpp: views where the layout allows ----
Tensor reshape(const Tensor& x, const Shape& shape);  // one entry may be -1
Tensor permute(const Tensor& x, const std::vector<int64_t>& perm);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
Tensor contiguous(const Tensor& x);

// ---- activation.cpp ----
Tensor gelu(const Tensor& x);
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
// Inverted dropout: zero with probability p, scale the rest by 1/(1-p); the mask is a function
// of (seed, element index), so backward recomputes it instead of storing it.
Tensor dropout(const Tensor& x, float p, uint64_t seed);

// ---- norm.cpp ----
// LayerNorm over the last dimension C; w, b: (C) or null.
Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps);

// ---- attention.cpp ----
// Multi-head scaled-dot-product self-attention as one op, over N branches at once.
// qkv: (B, T, N*3C), branch n's [q | k | v] at columns n*3C.., each head h at columns h*D ..
// h*D+D-1 of its part (timm's order for N = 1). Returns (B, T, N*C): softmax(Q K^T / sqrt(D)) V
// per branch and head, heads concatenated, branch n at columns n*C.
Tensor attention(const Tensor& qkv, int64_t heads, int64_t branches = 1);
// The attention probabilities (B, N*H, T, T) of the same computation; no gradient.
Tensor attention_probs(const Tensor& qkv, int64_t heads, int64_t branches = 1);

// ---- loss.cpp ----
// Mean over the batch of cross-entropy between softmax(logits) and the one-hot labels smoothed
// by `smoothing` (q = (1 - s) onehot + s / K). logits: (B, K) float32; labels: (B) int32.
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float smoothing);

// ---- patch.cpp ----
// images (B, channels, S, S) -> (B, T, channels*P*P), T = (S/P)^2, each patch flattened in
// (channel, row, column) order, the order of a Conv2d weight (C, channels, P, P).
Tensor patchify(const Tensor& images, int64_t patch);
// Conv(k = P, stride = P) as patchify + linear: -> (B, T, C).
Tensor patch_embed(const Tensor& images, const Tensor& w, const Tensor& b, int64_t patch);

// ---- init.cpp: seeded random tensors (counter-based, so identical on every device) ----
Tensor randn(const Shape& shape, uint64_t seed, float mean, float std);
Tensor rand_uniform(const Shape& shape, uint64_t seed, float low, float high);
// Normal(mean, std) restricted to [a, b] by resampling.
Tensor trunc_normal(const Shape& shape, uint64_t seed, float mean, float std, float a, float b);
// A uniform float in [0, 1) for (seed, index, draw): the generator every random op shares.
float uniform_at(uint64_t seed, uint64_t index, uint64_t draw);

// ---- optim.cpp: in-place updates, outside autograd ----
void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step);
void sgd_update(const Tensor& param, const Tensor& grad, const Tensor& buf, float lr, float momentum,
                float dampening, float weight_decay, bool nesterov, bool first_step);
double sum_of_squares(const Tensor& t);
void scale_inplace(const Tensor& t, float s);

}  // namespace duat
