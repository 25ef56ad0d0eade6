// norm.cu: row kernels: LayerNorm (a warp per row; its affine gradients by column sums),
// softmax and log-softmax, cross-entropy with label smoothing, argmax and the count of correct
// predictions. Contracts: core/backend.h. The LayerNorm and cross-entropy kernels were verified
// on an H100 before they moved here; the cross-entropy now guards labels outside [0, K).
#include <algorithm>
#include <string>

#include "common.cuh"

namespace duat {
namespace cuda {

namespace {

// One warp per row; a lane holds VPL values (columns lane + 32 i).
template <int VPL>
__global__ void __launch_bounds__(128) layernorm_forward_kernel(const float* x, const float* resid,
                                                                int64_t resid_rows, const float* gamma,
                                                                const float* beta, float* y, float* mean,
                                                                float* rstd, int64_t rows, int C, float eps) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* xr = x + r * C;
  const float* rr = resid ? resid + (r % resid_rows) * C : nullptr;
  float v[VPL], sum = 0.0f;
#pragma unroll
  for (int i = 0; i < VPL; i++) {
    const int c = lane + 32 * i;
    v[i] = c < C ? xr[c] + (rr ? rr[c] : 0.0f) : 0.0f;
    sum += v[i];
  }
  const float mu = warp_sum(sum) / static_cast<float>(C);
  float sq = 0.0f;
#pragma unroll
  for (int i = 0; i < VPL; i++) {
    const int c = lane + 32 * i;
    const float d = c < C ? v[i] - mu : 0.0f;
    sq = fmaf(d, d, sq);
  }
  const float rs = dm::layernorm_rstd(warp_sum(sq), C, eps);
  float* yr = y + r * C;
#pragma unroll
  for (int i = 0; i < VPL; i++) {
    const int c = lane + 32 * i;
    if (c < C) yr[c] = (v[i] - mu) * rs * (gamma ? gamma[c] : 1.0f) + (beta ? beta[c] : 0.0f);
  }
  if (lane == 0 && mean) mean[r] = mu;
  if (lane == 0 && rstd) rstd[r] = rs;
}

template <int VPL>
__global__ void __launch_bounds__(128) layernorm_backward_kernel(const float* dy, const float* x, const float* resid,
                                                                 int64_t resid_rows, const float* mean,
                                                                 const float* rstd, const float* gamma, float* dx,
                                                                 int64_t rows, int C, bool accumulate) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float mu = mean[r], rs = rstd[r];
  float g[VPL], xh[VPL], sg = 0.0f, sgx = 0.0f;
#pragma unroll
  for (int i = 0; i < VPL; i++) {
    const int c = lane + 32 * i;
    g[i] = c < C ? dy[r * C + c] * (gamma ? gamma[c] : 1.0f) : 0.0f;
    xh[i] = c < C ? (x[r * C + c] + (resid ? resid[(r % resid_rows) * C + c] : 0.0f) - mu) * rs : 0.0f;
    sg += g[i];
    sgx = fmaf(g[i], xh[i], sgx);
  }
  const float mean_g = warp_sum(sg) / C, mean_gx = warp_sum(sgx) / C;
#pragma unroll
  for (int i = 0; i < VPL; i++) {
    const int c = lane + 32 * i;
    if (c >= C) continue;
    const float d = dm::layernorm_dx(g[i], xh[i], mean_g, mean_gx, rs);
    dx[r * C + c] = accumulate ? dx[r * C + c] + d : d;
  }
}

// A residual's gradient from the rows' dx (dz: `sets` sets of n values each, laid out set after
// set): dresid[i] (+)= the fp64 sum over the sets, in order, of dz[s * n + i], rounded once; dx
// (when given) (+)= dz.
__global__ void layernorm_residual_sets_kernel(const float* dz, float* dx, float* dresid, int64_t sets, int64_t n,
                                               bool accumulate, bool resid_accumulate) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double sum = 0.0;
    for (int64_t s = 0; s < sets; s++) {
      const float d = dz[s * n + i];
      sum += d;
      if (dx) dx[s * n + i] = accumulate ? dx[s * n + i] + d : d;
    }
    const float v = static_cast<float>(sum);
    dresid[i] = resid_accumulate ? dresid[i] + v : v;
  }
}

// Column sums over rows, 32 columns x 8 row lanes per block, atomics across row chunks:
// out1[c] += sum_r x1(r, c), out2[c] += sum_r x(r, c) * xhat(r, c) when `xhat_of` is given.
__global__ void column_sums_kernel(const float* x, const float* xin, const float* mean, const float* rstd,
                                   float* sum_x, float* sum_x_xhat, int64_t rows, int cols, int rows_per_block,
                                   int64_t x_batch) {
  __shared__ float s1[8][33], s2[8][33];
  x += blockIdx.z * x_batch;
  if (sum_x) sum_x += static_cast<int64_t>(blockIdx.z) * cols;
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_block;
  const int64_t r1 = min(rows, r0 + rows_per_block);
  float a = 0.0f, b = 0.0f;
  if (c < cols)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      const float v = x[r * cols + c];
      a += v;
      if (sum_x_xhat) b = fmaf(v, (xin[r * cols + c] - mean[r]) * rstd[r], b);
    }
  s1[threadIdx.y][threadIdx.x] = a;
  s2[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  for (int i = 1; i < 8; i++) {
    a += s1[i][threadIdx.x];
    b += s2[i][threadIdx.x];
  }
  if (sum_x) atomicAdd(sum_x + c, a);
  if (sum_x_xhat) atomicAdd(sum_x_xhat + c, b);
}

void launch_column_sums(const float* x, const float* xin, const float* mean, const float* rstd, float* sum_x,
                        float* sum_x_xhat, int64_t batch, int64_t rows, int64_t cols, int64_t x_batch) {
  cudaStream_t s = stream();
  const int rows_per_block = 256;
  const dim3 grid(static_cast<unsigned>(dm::ceil_div(cols, 32)), static_cast<unsigned>(dm::ceil_div(rows, rows_per_block)),
                  static_cast<unsigned>(batch));
  column_sums_kernel<<<grid, dim3(32, 8), 0, s>>>(x, xin, mean, rstd, sum_x, sum_x_xhat, rows, static_cast<int>(cols),
                                                  rows_per_block, x_batch);
  launched("column sums");
}


template <template <int> class Kernel, typename... Args>
void launch_by_vpl(int64_t C, dim3 grid, cudaStream_t s, Args... args) {
  const int64_t vpl = dm::ceil_div(C, 32);
  if (vpl <= 1) Kernel<1>::launch(grid, s, args...);
  else if (vpl <= 2) Kernel<2>::launch(grid, s, args...);
  else if (vpl <= 4) Kernel<4>::launch(grid, s, args...);
  else if (vpl <= 8) Kernel<8>::launch(grid, s, args...);
  else if (vpl <= 16) Kernel<16>::launch(grid, s, args...);
  else if (vpl <= 32) Kernel<32>::launch(grid, s, args...);
  else fail(ERROR_DEVICE, "layerNorm on CUDA supports rows of at most 1024 values, got " + std::to_string(C));
}

template <int VPL>
struct LayerNormForward {
  template <typename... Args>
  static void launch(dim3 grid, cudaStream_t s, Args... args) {
    layernorm_forward_kernel<VPL><<<grid, 128, 0, s>>>(args...);
  }
};
template <int VPL>
struct LayerNormBackward {
  template <typename... Args>
  static void launch(dim3 grid, cudaStream_t s, Args... args) {
    layernorm_backward_kernel<VPL><<<grid, 128, 0, s>>>(args...);
  }
};

// A warp per row of `cols`, a lane striding over the columns: max, then sum, then the row.
__global__ void softmax_forward_kernel(const float* x, float* y, int64_t rows, int64_t cols, bool log) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* xr = x + r * cols;
  float* yr = y + r * cols;
  float m = -INFINITY;
  for (int64_t c = lane; c < cols; c += 32) m = fmaxf(m, xr[c]);
  m = warp_max(m);
  float s = 0.0f;
  for (int64_t c = lane; c < cols; c += 32) s += expf(xr[c] - m);
  s = warp_sum(s);
  const float lse = m + logf(s), inv = 1.0f / s;
  for (int64_t c = lane; c < cols; c += 32) yr[c] = log ? xr[c] - lse : expf(xr[c] - m) * inv;
}

// dx += y * (dy - sum(dy * y)), or for log-softmax dx += dy - exp(y) * sum(dy).
__global__ void softmax_backward_kernel(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols,
                                        bool log) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* yr = y + r * cols;
  const float* gr = dy + r * cols;
  float s = 0.0f;
  for (int64_t c = lane; c < cols; c += 32) s += log ? gr[c] : gr[c] * yr[c];
  s = warp_sum(s);
  for (int64_t c = lane; c < cols; c += 32)
    dx[r * cols + c] += log ? gr[c] - expf(yr[c]) * s : yr[c] * (gr[c] - s);
}

// One warp per row of logits. A label outside [0, K) poisons the loss with NaN and zeroes its row.
__global__ void cross_entropy_kernel(const float* logits, const int32_t* labels, float* loss, float* dlogits,
                                     int64_t B, int K, float smoothing) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= B) return;
  const int y = labels[r];
  if (y < 0 || y >= K) {
    if (dlogits)
      for (int c = lane; c < K; c += 32) dlogits[r * K + c] = 0.0f;
    if (lane == 0) atomicAdd(loss, NAN);
    return;
  }
  const float* z = logits + r * K;
  float m = -INFINITY, zsum = 0.0f;
  for (int c = lane; c < K; c += 32) m = fmaxf(m, z[c]), zsum += z[c];
  m = warp_max(m);
  zsum = warp_sum(zsum);
  float s = 0.0f;
  for (int c = lane; c < K; c += 32) s += expf(z[c] - m);
  s = warp_sum(s);
  const float inv_b = 1.0f / static_cast<float>(B), off = smoothing / K, on = 1.0f - smoothing + off;
  if (dlogits)
    for (int c = lane; c < K; c += 32) dlogits[r * K + c] = (expf(z[c] - m) / s - (c == y ? on : off)) * inv_b;
  const float lse = m + logf(s);
  if (lane == 0) atomicAdd(loss, ((1.0f - smoothing) * (lse - z[y]) + smoothing * (lse - zsum / K)) * inv_b);
}

// The first index of a row's largest value (NaN counts as largest), by a warp per row.
__device__ __forceinline__ int row_argmax(const float* row, int64_t cols, int lane) {
  float best = -INFINITY;
  int64_t at = cols;  // none yet
  for (int64_t c = lane; c < cols; c += 32) {
    const float v = row[c];
    if (at == cols || v > best || (isnan(v) && !isnan(best))) best = v, at = c;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oa = __shfl_xor_sync(0xffffffffu, at, o);
    const bool take = oa != cols && (at == cols || ob > best || (isnan(ob) && !isnan(best)) ||
                                     ((ob == best || (isnan(ob) && isnan(best))) && oa < at));
    if (take) best = ob, at = oa;
  }
  return static_cast<int>(at);
}

__global__ void argmax_kernel(const float* x, int32_t* out, int64_t rows, int64_t cols) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  if (r >= rows) return;
  const int at = row_argmax(x + r * cols, cols, threadIdx.x % 32);
  if (threadIdx.x % 32 == 0) out[r] = at;
}

__global__ void count_correct_kernel(const float* logits, const int32_t* labels, float* out, int64_t B, int64_t K) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  if (r >= B) return;
  const int at = row_argmax(logits + r * K, K, threadIdx.x % 32);
  if (threadIdx.x % 32 == 0 && at == labels[r]) atomicAdd(out, 1.0f);
}

dim3 warp_rows(int64_t rows) { return dim3(static_cast<unsigned>(dm::ceil_div(rows, 4))); }

}  // namespace

void layernorm_forward(const LayerNormArgs& a) {
  if (a.rows <= 0) return;
  launch_by_vpl<LayerNormForward>(a.C, warp_rows(a.rows), stream(), a.x, a.resid, a.resid_rows > 0 ? a.resid_rows : a.rows,
                                  a.gamma, a.beta, a.y, a.mean, a.rstd, a.rows, static_cast<int>(a.C), a.eps);
  launched("layerNorm forward");
}

void layernorm_backward(const LayerNormGradArgs& a) {
  if (a.rows <= 0) return;
  if (a.resid && (a.dgamma || a.dbeta)) fail(ERROR_DEVICE, "layerNorm backward: dgamma/dbeta with a residual input");
  if (a.dresid) {
    // The rows' dx into scratch first, then summed over the sets and added where they go.
    float* dz = static_cast<float*>(device_alloc(static_cast<size_t>(a.rows * a.C) * sizeof(float)));
    launch_by_vpl<LayerNormBackward>(a.C, warp_rows(a.rows), stream(), a.dy, a.x, a.resid, a.resid_rows, a.mean,
                                     a.rstd, a.gamma, dz, a.rows, static_cast<int>(a.C), false);
    launched("layerNorm backward");
    const int64_t n = a.resid_rows * a.C;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(dm::ceil_div(n, 256), 4096));
    layernorm_residual_sets_kernel<<<blocks, 256, 0, stream()>>>(dz, a.dx, a.dresid, a.rows / a.resid_rows, n,
                                                                 a.accumulate, a.resid_accumulate);
    launched("layerNorm backward (residual)");
    device_free(dz);
  } else if (a.dx) {
    launch_by_vpl<LayerNormBackward>(a.C, warp_rows(a.rows), stream(), a.dy, a.x, a.resid,
                                     a.resid_rows > 0 ? a.resid_rows : a.rows, a.mean, a.rstd, a.gamma, a.dx, a.rows,
                                     static_cast<int>(a.C), a.accumulate);
    launched("layerNorm backward");
  }
  if (a.dgamma || a.dbeta) launch_column_sums(a.dy, a.x, a.mean, a.rstd, a.dbeta, a.dgamma, 1, a.rows, a.C, 0);
}

void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols, bool log) {
  if (rows <= 0) return;
  softmax_forward_kernel<<<warp_rows(rows), 128, 0, stream()>>>(x, y, rows, cols, log);
  launched("softmax forward");
}

void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols, bool log) {
  if (rows <= 0) return;
  softmax_backward_kernel<<<warp_rows(rows), 128, 0, stream()>>>(y, dy, dx, rows, cols, log);
  launched("softmax backward");
}

void cross_entropy(const float* logits, const int32_t* labels, float* loss, float* dlogits, int64_t B, int64_t K,
                   float smoothing) {
  cudaStream_t s = stream();
  check_cuda(cudaMemsetAsync(loss, 0, sizeof(float), s), "cross entropy (clear)");
  cross_entropy_kernel<<<warp_rows(B), 128, 0, s>>>(logits, labels, loss, dlogits, B, static_cast<int>(K), smoothing);
  launched("cross entropy");
}

void argmax_rows(const float* x, int32_t* out, int64_t rows, int64_t cols) {
  if (rows <= 0) return;
  argmax_kernel<<<warp_rows(rows), 128, 0, stream()>>>(x, out, rows, cols);
  launched("argmax");
}

void count_correct(const float* logits, const int32_t* labels, float* out, int64_t B, int64_t K) {
  cudaStream_t s = stream();
  check_cuda(cudaMemsetAsync(out, 0, sizeof(float), s), "count correct (clear)");
  if (B > 0) count_correct_kernel<<<warp_rows(B), 128, 0, s>>>(logits, labels, out, B, K);
  launched("count correct");
}

}  // namespace cuda
}  // namespace duat
