// ops.h: every differentiable op. Each validates its arguments (shapes, dtypes, devices),
// computes its forward with the Backend of its inputs' device and records its backward beside it
// (see the op's .cpp), so one definition serves every device. Inputs may be views; outputs are
// contiguous unless the op is a view op (reshape, permute, slice) or says otherwise.
// Shape letters: B batch, T tokens, C channels, H heads, D head size, N branches, R rows.
#pragma once
#include <cstdint>
#include <memory>
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
// Sum / mean over `dims` (empty: all); keepdim keeps them as size 1. fp64 accumulation on the CPU.
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
// The same values on `device` (differentiable: the gradient goes back to x's device).
Tensor to(const Tensor& x, Device device);

// ---- activation.cpp ----
Tensor gelu(const Tensor& x);
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
// Inverted dropout: zero with probability p, scale the rest by 1/(1-p); the mask is a function
// of (seed, element index), so backward recomputes it instead of storing it.
Tensor dropout(const Tensor& x, float p, uint64_t seed);

// ---- norm.cpp ----
// LayerNorm over the last dimension C; w, b: (C) or null. With `resid` (R, C), the input of row r
// is x[r] + resid[r % R]: x (..., R, C) is several row sets sharing one residual (the stage's
// x + a_n for every branch n), and resid's gradient is the sum over them. resid excludes w, b.
Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, const Tensor& resid = nullptr);

// ---- attention.cpp ----
// Multi-head scaled-dot-product self-attention as one op, over N branches at once.
// qkv: (B, T, N*3C), branch n's [q | k | v] at columns n*3C.., each head h at columns h*D ..
// h*D+D-1 of its part (timm's order for N = 1). Returns (B, T, N*C): softmax(Q K^T / sqrt(D)) V
// per branch and head, heads concatenated, branch n at columns n*C. Keeps only the log-sum-exp
// of each row for backward (B*N*H*T floats), which recomputes the probabilities. `link` (from
// the QKV branch_linear, whose output this is the one consumer of): backward sets link->db, the
// QKV bias's gradient (N, 3C), summed from each head's gradient while it is in cache, when the
// gradient it writes is all qkv gets.
struct GeluLink;
Tensor attention(const Tensor& qkv, int64_t heads, int64_t branches = 1, const std::shared_ptr<GeluLink>& link = nullptr);
// The first `queries` rows of attention's output alone, (B, queries, N*C), for inference (the
// class token's query against every key): refused where it would record a gradient. On devices
// without it (Backend::attention_first_queries) every row is computed and the first kept.
Tensor attention_first(const Tensor& qkv, int64_t heads, int64_t branches, int64_t queries);
// The attention probabilities (B, N*H, T, T) of the same computation; no gradient.
Tensor attention_probs(const Tensor& qkv, int64_t heads, int64_t branches = 1);

// ---- branch.cpp: the Para-Former stage's fused ops (docs/design.md, "The fused stage") ----
// y_n = act(x_n W'_n^T + b'_n) for every branch n in one (batched) product:
//   x: (R, C) read by every branch, or (N, R, C) one input per branch (any strides, unit last)
//   w: (N, O, C); b: (N, O) or null
//   ln_w, ln_b: (N, C) or both null: a LayerNorm affine folded in, W'_n = W_n diag(g_n) and
//     b'_n = W_n beta_n + b_n (x is then the normalised input without its affine)
//   gelu: act = GELU (the pre-activation is kept for backward), else identity
// Returns y as (N, R, O). `interleaved` lays it out in memory as (R, N*O) (branch n at columns
// n*O), which the QKV product (attention reads it as (B, T, N*3C)) and fc1 (the stage sum reads
// it as (R, N*M)) need; otherwise (N, R, O) contiguous.
//
// `link` joins a GELU branch_linear to the one stage_sum that reads its output (paraformer.cpp):
// forward leaves the pre-activation there, and stage_sum's backward, when it can, writes the
// gradient before the GELU (with the bias gradient) in its product's epilogue instead of the
// gradient after it; branch_linear's backward then takes both as they are. It joins the QKV
// branch_linear to its attention the same way, for the bias gradient only. A caller may join
// them only where the stage sum (the attention) is the output's one consumer.
struct GeluLink {
  Tensor pre;  // (N, R, O): the pre-activation, laid out like the output (set by forward)
  Tensor db;   // (N, O): the bias gradient, set by stage_sum's backward when it took the GELU's, or by attention's
};
//
// `packed` (optional, inference): w as pack_weight packed it for the products made of it here
// (groups 1 for one product of all branches, a shared interleaved input; N otherwise), read in
// place of w where the device's products read panels of its width and no gradient is recorded;
// w itself everywhere else. The same results either way.
Tensor branch_linear(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& ln_w, const Tensor& ln_b,
                     bool gelu, bool interleaved, const std::shared_ptr<GeluLink>& link = nullptr,
                     const Tensor& packed = nullptr);

// branch_linear(layernorm(x, nullptr, nullptr, eps, resid), w, b, nullptr, nullptr, gelu,
// interleaved, nullptr, packed): the stage's norms and the products after them (paraformer.cpp).
// Where no gradient is recorded and the device's products take normalised rows
// (Backend::gemm_normalizes_rows), the rows are normalised inside the product (on the CPU each
// thread normalises them into its own cache as it reads them), with no LayerNorm pass and no
// normalised tensor; the same values either way. x (R, C) or (N, R, C) as branch_linear's; resid
// (R, C) or null.
Tensor branch_linear_normed(const Tensor& x, const Tensor& resid, float eps, const Tensor& w, const Tensor& b, bool gelu,
                            bool interleaved, const Tensor& packed = nullptr);

// branch_linear's fold without autograd, for inference caches: {W' (N, O, C), b' (N, O)}.
std::vector<Tensor> fold_affine(const Tensor& w, const Tensor& b, const Tensor& ln_w, const Tensor& ln_b);
// The stage's output in one product: y = x + scale * (sum_n h_n W2_n^T + b2 + sum_n a_n), with
//   x (R, C), h (N, R, M) laid out as (R, N*M) (branch_linear's interleaved output; copied
//   otherwise), w2 (C, N*M) = [W2_1 .. W2_N] side by side, b2 (C) the branch biases summed,
//   a (N, R, C) the branches' attention outputs. Returns (R, C). `packed`: w2 as pack_weight
//   packed it (groups 1), as branch_linear's.
Tensor stage_sum(const Tensor& x, const Tensor& h, const Tensor& w2, const Tensor& b2, const Tensor& a, float scale,
                 const std::shared_ptr<GeluLink>& link = nullptr, const Tensor& packed = nullptr);
// A weight packed ahead for the device's products, for inference caches (Backend::pack_b): w
// (n, K) read K-major (strides (1, ld), ld >= n: the products' B(k, j) = w(j, k)) as `groups`
// products side by side of n / groups columns each; returns (groups, panels, K, width) floats,
// or null where the device's products read weights as they are. No gradient.
Tensor pack_weight(const Tensor& w, int64_t groups);

// ---- collective.cpp: branch-parallel training's pair of collectives (docs/design.md,
// "Distributed training"); every rank must call them in the same order ----
class Communicator;
// The identity forward; backward sums x's gradient over every rank of `comm`.
Tensor branch_input(const Tensor& x, Communicator& comm);
// A new tensor holding `partial` summed over every rank; backward passes the gradient on as it is.
Tensor branch_reduce(const Tensor& partial, Communicator& comm);

// ---- loss.cpp ----
// Mean over the batch of cross-entropy between softmax(logits) and the one-hot labels smoothed
// by `smoothing` (q = (1 - s) onehot + s / K). logits: (B, K) float32; labels: (B) int32, on the
// logits' device. Labels on the CPU are checked; on another device a label outside [0, K) gives
// a NaN loss (checking it would wait for the device).
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float smoothing);
// Checks class labels for `classes` classes: int32, one dimension; on the CPU every value in
// [0, classes) (ERROR_ARGUMENT naming the first that is not).
void check_class_labels(const Tensor& labels, int64_t classes, const char* op);
// The number of rows whose largest logit is the label's, as a float32 scalar on the logits'
// device (no gradient; a training step reads it back with its other statistics).
Tensor count_correct(const Tensor& logits, const Tensor& labels);

// ---- patch.cpp ----
// images (B, channels, S, S) -> (B, T, channels*P*P), T = (S/P)^2, each patch flattened in
// (channel, row, column) order, the order of a Conv2d weight (C, channels, P, P).
Tensor patchify(const Tensor& images, int64_t patch);
// Conv(k = P, stride = P) as patchify + linear: -> (B, T, C).
Tensor patch_embed(const Tensor& images, const Tensor& w, const Tensor& b, int64_t patch);

// ---- init.cpp: seeded random tensors (counter-based, so identical on every device) ----
Tensor randn(const Shape& shape, uint64_t seed, float mean, float std, Device device = DEVICE_CPU);
Tensor rand_uniform(const Shape& shape, uint64_t seed, float low, float high, Device device = DEVICE_CPU);
// Normal(mean, std) restricted to [a, b] by resampling.
Tensor trunc_normal(const Shape& shape, uint64_t seed, float mean, float std, float a, float b,
                    Device device = DEVICE_CPU);

// ---- optim.cpp: in-place updates and statistics, outside autograd ----
// The squared L2 norm of all the tensors together, as a float32 scalar on their device.
Tensor sum_of_squares(const std::vector<Tensor>& ts);
// t *= s in place.
void scale_inplace(const Tensor& t, float s);

}  // namespace duat
