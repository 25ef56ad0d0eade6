// device_math.h: per-element math and index arithmetic shared by every backend, written once as
// __host__ __device__ functions. The CUDA kernels call them on the GPU, the CPU backend on the
// CPU, and the C++ tests check them there (native/tests/test_core.cpp), so most of what a GPU run
// could get wrong is checked on every machine, GPU or not.
#pragma once
#include <math.h>

#include <cstdint>

#ifndef DUAT_HD  // inline everywhere; __host__ __device__ under nvcc
#ifdef __CUDACC__
#define DUAT_HD __host__ __device__ __forceinline__
#else
#define DUAT_HD inline __attribute__((always_inline))
#endif
#endif

namespace duat {
namespace dm {

DUAT_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The counter-based generator every random op shares: element `index` of draw `draw` under
// `seed` is a pure function of the three, so values do not depend on threads or devices.
DUAT_HD uint64_t mix64(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
// A uniform float in [0, 1), 24 bits (exact in float32).
DUAT_HD float uniform_at(uint64_t seed, uint64_t index, uint64_t draw) {
  const uint64_t h = mix64(mix64(seed * 0x9e3779b97f4a7c15ULL + index) + draw * 0xd1b54a32d192ed03ULL);
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

// The element offsets of linear index i (row-major over `shape`, nd dimensions) under two or
// three stride sets (s2 may be null): how the elementwise and reduction kernels walk any view.
DUAT_HD void strided_offsets(int64_t i, int nd, const int64_t* shape, const int64_t* s0, const int64_t* s1,
                             const int64_t* s2, int64_t* o0, int64_t* o1, int64_t* o2) {
  int64_t a = 0, b = 0, c = 0;
  for (int d = nd - 1; d >= 0; d--) {
    const int64_t k = i % shape[d];
    i /= shape[d];
    a += k * s0[d];
    b += k * s1[d];
    if (s2) c += k * s2[d];
  }
  *o0 = a;
  *o1 = b;
  *o2 = c;
}

// GELU, erf form (PyTorch's default), and its derivative.
DUAT_HD float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
DUAT_HD float gelu_grad(float x) {
  const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
  const float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
  return cdf + x * pdf;
}

// Softmax over a stream of scores without storing them: after every score, `m` is the running
// maximum and `l` the sum of exp(s - m). Adding a score returns the factor that rescales what
// was accumulated so far and the weight of the new score.
struct OnlineSoftmax {
  float m = -INFINITY;
  float l = 0.0f;
  DUAT_HD void add(float s, float* rescale, float* weight) {
    const float m_new = fmaxf(m, s);
    *rescale = expf(m - m_new);  // 0 for the first score (m = -inf)
    *weight = expf(s - m_new);
    l = l * *rescale + *weight;
    m = m_new;
  }
  // A chunk of CH scores at once (the first `valid` count): one rescale per chunk, and CH
  // independent exponentials instead of a chain of CH dependent updates.
  template <int CH>
  DUAT_HD void add_chunk(const float (&s)[CH], int valid, float* rescale, float (&weight)[CH]) {
    float m_new = m;
    for (int c = 0; c < CH; c++)
      if (c < valid) m_new = fmaxf(m_new, s[c]);
    *rescale = expf(m - m_new);
    float sum = 0.0f;
    for (int c = 0; c < CH; c++) {
      weight[c] = c < valid ? expf(s[c] - m_new) : 0.0f;
      sum += weight[c];
    }
    l = l * *rescale + sum;
    m = m_new;
  }
  DUAT_HD float log_sum_exp() const { return m + logf(l); }
};

// Where attention's (batch b, branch n, head h) reads and writes, in the layouts of
// native/ops/attention.cpp: qkv (B, T, N*3C) with [Q | K | V] per branch, out (B, T, N*C).
struct AttnLayout {
  int64_t T, C, N, H, D;
  DUAT_HD int64_t ld_in() const { return N * 3 * C; }
  DUAT_HD int64_t ld_out() const { return N * C; }
  DUAT_HD int64_t q_offset(int64_t b, int64_t n, int64_t h) const { return b * T * ld_in() + n * 3 * C + h * D; }
  DUAT_HD int64_t k_offset(int64_t b, int64_t n, int64_t h) const { return q_offset(b, n, h) + C; }
  DUAT_HD int64_t v_offset(int64_t b, int64_t n, int64_t h) const { return q_offset(b, n, h) + 2 * C; }
  DUAT_HD int64_t out_offset(int64_t b, int64_t n, int64_t h) const { return b * T * ld_out() + n * C + h * D; }
  // Per-row statistics (log-sum-exp) are stored (B, N, H, T).
  DUAT_HD int64_t stat_offset(int64_t b, int64_t n, int64_t h) const { return ((b * N + n) * H + h) * T; }
};

// The attention backward of one score: with p = exp(s - lse), dp = dout . v and
// delta = dout . out, ds = p * (dp - delta). Returns ds (scaled by the caller).
DUAT_HD float attention_dscore(float s, float lse, float dp, float delta) { return expf(s - lse) * (dp - delta); }

// LayerNorm of one row from its sums: mean and 1/sqrt(var + eps), variance from the second
// pass over (x - mean) so that large means lose no precision.
DUAT_HD float layernorm_rstd(float centered_sq_sum, int64_t C, float eps) {
  return 1.0f / sqrtf(centered_sq_sum / static_cast<float>(C) + eps);
}
// dx of a LayerNorm row without affine: rstd * (g - mean(g) - xhat * mean(g * xhat)), with
// g = dy * gamma (gamma = 1 without affine).
DUAT_HD float layernorm_dx(float g, float xhat, float mean_g, float mean_gx, float rstd) {
  return rstd * (g - mean_g - xhat * mean_gx);
}

// The clipping factor of a gradient with squared norm `sumsq`: min(1, max_norm / (norm + 1e-6)).
DUAT_HD float clip_factor(float sumsq, float max_norm) {
  const float norm = sqrtf(sumsq);
  return norm > max_norm ? max_norm / (norm + 1e-6f) : 1.0f;
}

// Whether x is finite (neither infinite nor NaN), the same on host and device.
DUAT_HD bool is_finite(float x) { return x - x == 0.0f; }

// The gradient factor of an update under (sumsq, max_norm): the clipping factor when clipping.
DUAT_HD float grad_factor(const float* sumsq, float max_norm) {
  return sumsq && max_norm > 0.0f ? clip_factor(*sumsq, max_norm) : 1.0f;
}
// Whether an update under (sumsq, skip_non_finite) is skipped.
DUAT_HD bool update_skipped(const float* sumsq, bool skip_non_finite) {
  return sumsq && skip_non_finite && !is_finite(*sumsq);
}

// SGD with momentum on one element (PyTorch's formula): d = g + wd * p; b = first ? d :
// momentum * b + (1 - dampening) * d; p -= lr * (nesterov ? d + momentum * b : b). Updates *buf.
DUAT_HD float sgd_element(float p, float g, float* buf, float lr, float weight_decay, float momentum, float dampening,
                          bool nesterov, bool first) {
  float d = g + weight_decay * p;
  if (buf) {
    *buf = first ? d : momentum * *buf + (1.0f - dampening) * d;
    d = nesterov ? d + momentum * *buf : *buf;
  }
  return p - lr * d;
}

// The stage's last epilogue: out = x + s * (mlp + sum_b a_b).
DUAT_HD float stage_combine(float x, float mlp, float branch_sum, float scale) { return x + scale * (mlp + branch_sum); }

// AdamW on one element, PyTorch's formula: decoupled weight decay, then
// p -= step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps). Updates m and v in place.
DUAT_HD float adamw_element(float p, float g, float* m, float* v, float beta1, float one_minus_beta1, float beta2,
                            float one_minus_beta2, float eps, float decay, float step_size, float inv_sqrt_bc2) {
  *m = beta1 * *m + one_minus_beta1 * g;
  *v = beta2 * *v + one_minus_beta2 * g * g;
  return p * decay - step_size * *m / (sqrtf(*v) * inv_sqrt_bc2 + eps);
}

// Patch embedding input index: token t >= 1 of image b, channel c, in-patch (py, px).
DUAT_HD int64_t patch_pixel(int64_t b, int64_t ch, int64_t t, int64_t py, int64_t px, int64_t channels, int64_t S,
                            int64_t P) {
  const int64_t grid = S / P, ty = (t - 1) / grid, tx = (t - 1) % grid;
  return ((b * channels + ch) * S + ty * P + py) * S + tx * P + px;
}

}  // namespace dm
}  // namespace duat
