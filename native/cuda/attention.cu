// attention.cu: multi-head attention over (batch, branch, head) in one launch, flash-style: keys
// and values stream through shared memory, the softmax is online (dm::OnlineSoftmax), no T x T
// matrix is stored; forward keeps the log-sum-exp of every row, and backward recomputes the
// probabilities from it in two launches (dQ with delta = dout . out, then dK and dV). Layouts:
// dm::AttnLayout (the same as the CPU op's). Verified on an H100 before it moved here.
//
// The kernels are built for head sizes 8, 16, 32, 64 and 128. Any other size up to 128 runs in
// the next of these up (PAD): dimensions past the head's own read as zero, add nothing to a dot
// product, and are never written.
#include <string>
#include <type_traits>

#include "common.cuh"

namespace duat {
namespace cuda {

namespace {

// Block: 128 threads = QPB queries x TPQ threads each; a thread holds D / TPQ dimensions
// (d = t * TPQ + part, so a warp's shared-memory reads are conflict-free). Keys and values
// stream through shared memory in tiles of KT; the softmax is online (device_math.h).
template <int D>
struct AttnShape {
  static constexpr int TPQ = D >= 64 ? 8 : (D >= 4 ? D / 4 : 1);  // threads per query
  static constexpr int DP = D / TPQ;                             // dims per thread
  static constexpr int QPB = 128 / TPQ;                          // queries per block
  static constexpr int KT = D > 64 ? 32 : 64;                    // keys per tile
};

// Which (batch, branch, head) and which row (a query, or a key in the dK/dV kernel) a thread
// works on; `clamped` stays inside T for the loads of threads past the end, which compute but
// do not write.
template <int D>
struct AttnThread {
  int b, n, h, tid, part, row, clamped;
  __device__ explicit AttnThread(const dm::AttnLayout& L)
      : b(blockIdx.z), n(blockIdx.y / static_cast<int>(L.H)), h(blockIdx.y % static_cast<int>(L.H)),
        tid(threadIdx.x), part(threadIdx.x % AttnShape<D>::TPQ),
        row(blockIdx.x * AttnShape<D>::QPB + threadIdx.x / AttnShape<D>::TPQ),
        clamped(min(row, static_cast<int>(L.T) - 1)) {}
};

// Whether dimension d of a head of `dim` dimensions exists (always, unless the kernel is padded).
template <bool PAD>
__device__ __forceinline__ bool in_head(int d, int64_t dim) {
  return !PAD || d < dim;
}

// Rows r0 .. r0+KT-1 of two row-strided matrices (a at a[r*lda + d], b at b[r*ldb + d]) into
// shared tiles, rows at or past `valid` and dimensions past `dim` zeroed. UNROLL loads per thread
// in flight at once (all of them in the forward; fewer where the backward kernels would spill
// registers).
template <int D, bool PAD, int KT, int UNROLL>
__device__ __forceinline__ void attention_tile_pair(const float* a, int64_t lda, const float* b, int64_t ldb, int valid,
                                                    int64_t dim, float (*as)[D], float (*bs)[D], int tid) {
#pragma unroll UNROLL
  for (int it = 0; it < KT * D / 128; it++) {
    const int i = tid + it * 128, j = i / D, d = i % D;
    const bool load = j < valid && in_head<PAD>(d, dim);
    as[j][d] = load ? a[j * lda + d] : 0.0f;
    bs[j][d] = load ? b[j * ldb + d] : 0.0f;
  }
}

// Two dot products of one tile row with the thread group's registers, summed over the group.
template <int D>
__device__ __forceinline__ void attention_dot_pair(const float* x, const float* xs_row, const float* y,
                                                   const float* ys_row, int part, float* dx, float* dy) {
  using S = AttnShape<D>;
  float s = 0.0f, t2 = 0.0f;
#pragma unroll
  for (int t = 0; t < S::DP; t++) {
    s = fmaf(x[t], xs_row[t * S::TPQ + part], s);
    t2 = fmaf(y[t], ys_row[t * S::TPQ + part], t2);
  }
  *dx = group_sum<S::TPQ>(s);
  *dy = group_sum<S::TPQ>(t2);
}

template <int D, bool PAD>
__global__ void __launch_bounds__(128) attention_forward_kernel(const float* qkv, float* out, float* lse,
                                                                dm::AttnLayout L, float scale) {
  using S = AttnShape<D>;
  __shared__ float Ks[S::KT][D], Vs[S::KT][D];
  const AttnThread<D> at(L);
  const int b = at.b, n = at.n, h = at.h, tid = at.tid, part = at.part, qi = at.row, qr = at.clamped;
  const int64_t ld = L.ld_in();
  const float* q = qkv + L.q_offset(b, n, h) + qr * ld;
  const float* k = qkv + L.k_offset(b, n, h);
  const float* v = qkv + L.v_offset(b, n, h);
  float qv[S::DP], acc[S::DP];
#pragma unroll
  for (int t = 0; t < S::DP; t++) {
    const int d = t * S::TPQ + part;
    qv[t] = in_head<PAD>(d, L.D) ? q[d] * scale : 0.0f;
    acc[t] = 0.0f;
  }
  dm::OnlineSoftmax sm;
  for (int kt = 0; kt < L.T; kt += S::KT) {
    const int kn = min(S::KT, static_cast<int>(L.T) - kt);
    attention_tile_pair<D, PAD, S::KT, S::KT * D / 128>(k + kt * ld, ld, v + kt * ld, ld, kn, L.D, Ks, Vs, tid);
    __syncthreads();
    constexpr int CH = 8;  // keys per step: independent dot products and exponentials
    for (int j0 = 0; j0 < kn; j0 += CH) {
      float sc[CH], w[CH], rescale;
#pragma unroll
      for (int c = 0; c < CH; c++) {
        float dot = 0.0f;
#pragma unroll
        for (int t = 0; t < S::DP; t++) dot = fmaf(qv[t], Ks[j0 + c][t * S::TPQ + part], dot);
        sc[c] = dot;
      }
#pragma unroll
      for (int c = 0; c < CH; c++) sc[c] = group_sum<S::TPQ>(sc[c]);
      sm.add_chunk<CH>(sc, kn - j0, &rescale, w);
#pragma unroll
      for (int t = 0; t < S::DP; t++) {
        float a = acc[t] * rescale;
#pragma unroll
        for (int c = 0; c < CH; c++) a = fmaf(w[c], Vs[j0 + c][t * S::TPQ + part], a);
        acc[t] = a;
      }
    }
    __syncthreads();
  }
  if (qi >= L.T) return;
  float* o = out + L.out_offset(b, n, h) + qi * L.ld_out();
  const float inv = 1.0f / sm.l;
#pragma unroll
  for (int t = 0; t < S::DP; t++) {
    const int d = t * S::TPQ + part;
    if (in_head<PAD>(d, L.D)) o[d] = acc[t] * inv;
  }
  if (lse && part == 0) lse[L.stat_offset(b, n, h) + qi] = sm.log_sum_exp();
}

// dQ (and delta = dout . out per query): a query's thread group walks all keys.
template <int D, bool PAD>
__global__ void __launch_bounds__(128) attention_backward_dq_kernel(const float* dout, const float* qkv,
                                                                    const float* out, const float* lse, float* delta,
                                                                    float* dqkv, dm::AttnLayout L, float scale) {
  using S = AttnShape<D>;
  __shared__ float Ks[S::KT][D], Vs[S::KT][D];
  const AttnThread<D> at(L);
  const int b = at.b, n = at.n, h = at.h, tid = at.tid, part = at.part, qi = at.row, qr = at.clamped;
  const int64_t ld = L.ld_in();
  const float* q = qkv + L.q_offset(b, n, h) + qr * ld;
  const float* k = qkv + L.k_offset(b, n, h);
  const float* v = qkv + L.v_offset(b, n, h);
  const float* go = dout + L.out_offset(b, n, h) + qr * L.ld_out();
  const float* o = out + L.out_offset(b, n, h) + qr * L.ld_out();
  float qv[S::DP], dov[S::DP], dq[S::DP];
  float dl = 0.0f;
#pragma unroll
  for (int t = 0; t < S::DP; t++) {
    const int d = t * S::TPQ + part;
    const bool in = in_head<PAD>(d, L.D);
    qv[t] = in ? q[d] * scale : 0.0f;
    dov[t] = in ? go[d] : 0.0f;
    dl = fmaf(dov[t], in ? o[d] : 0.0f, dl);
    dq[t] = 0.0f;
  }
  dl = group_sum<S::TPQ>(dl);
  const float l = lse[L.stat_offset(b, n, h) + qr];
  for (int kt = 0; kt < L.T; kt += S::KT) {
    const int kn = min(S::KT, static_cast<int>(L.T) - kt);
    attention_tile_pair<D, PAD, S::KT, 8>(k + kt * ld, ld, v + kt * ld, ld, kn, L.D, Ks, Vs, tid);
    __syncthreads();
    for (int j = 0; j < kn; j++) {
      float s, dp;
      attention_dot_pair<D>(qv, Ks[j], dov, Vs[j], part, &s, &dp);
      const float ds = dm::attention_dscore(s, l, dp, dl);
#pragma unroll
      for (int t = 0; t < S::DP; t++) dq[t] = fmaf(ds, Ks[j][t * S::TPQ + part], dq[t]);
    }
    __syncthreads();
  }
  if (qi >= L.T) return;
  float* g = dqkv + L.q_offset(b, n, h) + qi * ld;
#pragma unroll
  for (int t = 0; t < S::DP; t++) {
    const int d = t * S::TPQ + part;
    if (in_head<PAD>(d, L.D)) g[d] = dq[t] * scale;
  }
  if (part == 0) delta[L.stat_offset(b, n, h) + qi] = dl;
}

// dK and dV: a key's thread group walks all queries (their q, dout, lse and delta in tiles).
template <int D, bool PAD>
__global__ void __launch_bounds__(128) attention_backward_dkv_kernel(const float* dout, const float* qkv,
                                                                     const float* lse, const float* delta,
                                                                     float* dqkv, dm::AttnLayout L, float scale) {
  using S = AttnShape<D>;
  __shared__ float Qs[S::KT][D], Gs[S::KT][D], ls[S::KT], ds_[S::KT];
  const AttnThread<D> at(L);
  const int b = at.b, n = at.n, h = at.h, tid = at.tid, part = at.part, ki = at.row, kr = at.clamped;
  const int64_t ld = L.ld_in();
  const float* q = qkv + L.q_offset(b, n, h);
  const float* k = qkv + L.k_offset(b, n, h) + kr * ld;
  const float* v = qkv + L.v_offset(b, n, h) + kr * ld;
  const float* go = dout + L.out_offset(b, n, h);
  const float* lrow = lse + L.stat_offset(b, n, h);
  const float* drow = delta + L.stat_offset(b, n, h);
  float kv[S::DP], vv[S::DP], dk[S::DP], dv[S::DP];
#pragma unroll
  for (int t = 0; t < S::DP; t++) {
    const int d = t * S::TPQ + part;
    const bool in = in_head<PAD>(d, L.D);
    kv[t] = in ? k[d] * scale : 0.0f;
    vv[t] = in ? v[d] : 0.0f;
    dk[t] = dv[t] = 0.0f;
  }
  for (int qt = 0; qt < L.T; qt += S::KT) {
    const int qn = min(S::KT, static_cast<int>(L.T) - qt);
    attention_tile_pair<D, PAD, S::KT, 8>(q + qt * ld, ld, go + qt * L.ld_out(), L.ld_out(), qn, L.D, Qs, Gs, tid);
    for (int j = tid; j < S::KT; j += 128) {
      ls[j] = j < qn ? lrow[qt + j] : 0.0f;
      ds_[j] = j < qn ? drow[qt + j] : 0.0f;
    }
    __syncthreads();
    for (int j = 0; j < qn; j++) {
      float s, dp;
      attention_dot_pair<D>(kv, Qs[j], vv, Gs[j], part, &s, &dp);
      const float p = expf(s - ls[j]);
      const float dsc = p * (dp - ds_[j]);
#pragma unroll
      for (int t = 0; t < S::DP; t++) {
        dv[t] = fmaf(p, Gs[j][t * S::TPQ + part], dv[t]);
        dk[t] = fmaf(dsc, Qs[j][t * S::TPQ + part], dk[t]);
      }
    }
    __syncthreads();
  }
  if (ki >= L.T) return;
  float* gk = dqkv + L.k_offset(b, n, h) + ki * ld;
  float* gv = dqkv + L.v_offset(b, n, h) + ki * ld;
#pragma unroll
  for (int t = 0; t < S::DP; t++) {
    const int d = t * S::TPQ + part;
    if (!in_head<PAD>(d, L.D)) continue;
    gk[d] = dk[t] * scale;
    gv[d] = dv[t];
  }
}


// The grid of the attention kernels: (query or key groups, N*H, B).
template <int D>
dim3 attention_grid(const dm::AttnLayout& L, int64_t B) {
  return dim3(static_cast<unsigned>(dm::ceil_div(L.T, AttnShape<D>::QPB)), static_cast<unsigned>(L.N * L.H),
              static_cast<unsigned>(B));
}

// Calls fn(size, pad) with the built head size that holds D and whether it is padded, both as
// compile-time constants.
template <typename F>
void with_head_size(int64_t D, F fn) {
  const auto in = [&](auto size) {
    if (size.value == D) fn(size, std::false_type{});
    else fn(size, std::true_type{});
  };
  if (D < 1 || D > 128) fail(ERROR_DEVICE, "attention on CUDA supports head sizes 1 to 128, got " + std::to_string(D));
  if (D <= 8) return in(std::integral_constant<int, 8>{});
  if (D <= 16) return in(std::integral_constant<int, 16>{});
  if (D <= 32) return in(std::integral_constant<int, 32>{});
  if (D <= 64) return in(std::integral_constant<int, 64>{});
  return in(std::integral_constant<int, 128>{});
}

// probs[(b, n*H+h), i, j] = scale * q_i . k_j for every (b, n, h): one thread per score.
__global__ void attention_scores_kernel(const float* qkv, float* probs, dm::AttnLayout L, int64_t B, float scale) {
  const int64_t T = L.T, total = B * L.N * L.H * T * T;
  DUAT_GRID_LOOP(idx, total) {
    const int64_t j = idx % T, i = (idx / T) % T, task = idx / (T * T);
    const int64_t h = task % L.H, n = (task / L.H) % L.N, b = task / (L.H * L.N);
    const float* q = qkv + L.q_offset(b, n, h) + i * L.ld_in();
    const float* k = qkv + L.k_offset(b, n, h) + j * L.ld_in();
    float dot = 0.0f;
    for (int64_t d = 0; d < L.D; d++) dot = fmaf(q[d], k[d], dot);
    probs[idx] = dot * scale;
  }
}

}  // namespace

void attention_forward(const dm::AttnLayout& L, int64_t B, const float* qkv, float* out, float* lse) {
  if (B <= 0 || L.T <= 0) return;
  cudaStream_t s = stream();
  const float scale = 1.0f / sqrtf(static_cast<float>(L.D));
  with_head_size(L.D, [&](auto d, auto pad) {
    constexpr int DV = decltype(d)::value;
    constexpr bool PAD = decltype(pad)::value;
    attention_forward_kernel<DV, PAD><<<attention_grid<DV>(L, B), 128, 0, s>>>(qkv, out, lse, L, scale);
  });
  launched("attention forward");
}

void attention_backward(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv, const float* out,
                        const float* lse, float* delta, float* dqkv) {
  if (B <= 0 || L.T <= 0) return;
  cudaStream_t s = stream();
  const float scale = 1.0f / sqrtf(static_cast<float>(L.D));
  with_head_size(L.D, [&](auto d, auto pad) {
    constexpr int DV = decltype(d)::value;
    constexpr bool PAD = decltype(pad)::value;
    const dim3 grid = attention_grid<DV>(L, B);
    attention_backward_dq_kernel<DV, PAD><<<grid, 128, 0, s>>>(dout, qkv, out, lse, delta, dqkv, L, scale);
    launched("attention backward (dq)");
    attention_backward_dkv_kernel<DV, PAD><<<grid, 128, 0, s>>>(dout, qkv, lse, delta, dqkv, L, scale);
    launched("attention backward (dk, dv)");
  });
}

void attention_probs(const dm::AttnLayout& L, int64_t B, const float* qkv, float* probs) {
  if (B <= 0 || L.T <= 0) return;
  const float scale = 1.0f / sqrtf(static_cast<float>(L.D));
  const int64_t rows = B * L.N * L.H * L.T;
  attention_scores_kernel<<<elementwise_blocks(rows * L.T), 256, 0, stream()>>>(qkv, probs, L, B, scale);
  launched("attention scores");
  softmax_forward(probs, probs, rows, L.T, false);
}

}  // namespace cuda
}  // namespace duat
