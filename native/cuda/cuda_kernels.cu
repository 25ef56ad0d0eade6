// cuda_kernels.cu: the kernels declared in cuda_kernels.h. Index math and per-element formulas
// come from device_math.h (also run by the CPU tests); this file holds data movement.
#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#include "../core/errors.h"
#include "cuda_kernels.h"
#include "cuda_memory.h"
#include "device_math.h"

namespace duat {
namespace cuda {

namespace {

std::atomic<int64_t> g_launches{0};

// Every launcher ends with this: counts the launch and surfaces configuration errors at once.
void launched(const char* what) {
  g_launches.fetch_add(1, std::memory_order_relaxed);
  check_cuda(cudaGetLastError(), what);
}

int device_sms() {
  static const int sms = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n > 0 ? n : 1;
  }();
  return sms;
}

int device_major() {
  static const int major = [] {
    int dev = 0, m = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, dev);
    return m;
  }();
  return major;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over groups of G consecutive lanes (G a power of two, at most 32).
template <int G>
__device__ __forceinline__ float group_sum(float v) {
  for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ================================ matrix product ================================================
// One block computes a 64 x 64 tile of C for one batch index (and, with split-K, one slice of
// the inner dimension). Operands pass through shared memory in the precision of the mode: fp32
// for the SIMT path, tf32-rounded fp32 or bf16 for the tensor cores (WMMA, float accumulators).
// Accumulators land in a shared 64 x 64 float tile that one epilogue, common to every mode,
// writes out. With split-K, each slice writes its partial tile to a workspace and the last
// slice to arrive (an atomic ticket per tile) adds them up and runs the epilogue.
constexpr int GEMM_BM = 64, GEMM_BN = 64, GEMM_BK = 32, GEMM_THREADS = 128;
constexpr int SPLITK_MIN_STEPS = 4, SPLITK_BLOCKS_PER_SM = 2, SPLITK_COPIES = 4;
constexpr int GEMM_TILE_PER_THREAD = GEMM_BM * GEMM_BK / GEMM_THREADS;  // floats of one operand tile

template <int MODE>
struct GemmSmem {
  using T = float;
  static constexpr int PAD = MODE == PRECISION_FP32 ? 1 : 4;  // fp32: no bank conflicts; tf32: wmma ldm % 4
  static __device__ __forceinline__ T convert(float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (MODE == PRECISION_TF32) return nvcuda::wmma::__float_to_tf32(v);
#endif
    return v;
  }
};
template <>
struct GemmSmem<PRECISION_BF16> {
  using T = __nv_bfloat16;
  static constexpr int PAD = 8;  // wmma ldm % 8 for 16-bit types
  static __device__ __forceinline__ T convert(float v) { return __float2bfloat16_rn(v); }
};

struct SplitK {
  int slices = 1;
  int copies = 1;              // accumulators per tile (slice s adds into copy s % copies)
  float* workspace = nullptr;  // (tiles, copies, BM*BN) accumulators, zero between launches
  int* tickets = nullptr;      // one per tile, zero between launches
};

// How one operand's 64 x 32 tile is read from memory: 16-byte vectors along k (a row-major
// operand), along rows (a transposed one), or single floats (other strides or alignments).
enum TileMode : int { TILE_VEC_K = 0, TILE_VEC_ROWS = 1, TILE_SCALAR_K = 2, TILE_SCALAR_ROWS = 3 };

TileMode tile_mode(const float* base, int64_t s_row, int64_t s_k, int64_t s_batch) {
  const bool aligned = reinterpret_cast<uintptr_t>(base) % 16 == 0 && s_batch % 4 == 0;
  if (s_k == 1) return aligned && s_row % 4 == 0 ? TILE_VEC_K : TILE_SCALAR_K;
  if (s_row == 1) return aligned && s_k % 4 == 0 ? TILE_VEC_ROWS : TILE_SCALAR_ROWS;
  return TILE_SCALAR_K;
}

// A tile in registers: 64 x 32 floats over 128 threads, 16 each. Loading the next tile into
// registers while the current one is multiplied keeps 16 independent loads in flight per thread.
struct TileRegs {
  float v[GEMM_TILE_PER_THREAD];
};

__device__ __forceinline__ float4 load4(const float* p, int valid) {
  if (valid >= 4) return *reinterpret_cast<const float4*>(p);
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (valid > 0) v.x = p[0];
  if (valid > 1) v.y = p[1];
  if (valid > 2) v.z = p[2];
  return v;
}

// Rows r0.. of X (row r, column k at X[r*s_r + k*s_k]), columns k0..k_end, rows below `rows`.
__device__ __forceinline__ void tile_load(TileRegs& t, const float* X, int64_t s_r, int64_t s_k, int r0, int rows,
                                          int k0, int k_end, TileMode mode, int tid) {
  if (mode == TILE_VEC_K) {
#pragma unroll
    for (int it = 0; it < GEMM_TILE_PER_THREAD / 4; it++) {
      const int s = tid + it * GEMM_THREADS, r = r0 + s / (GEMM_BK / 4), k = k0 + (s % (GEMM_BK / 4)) * 4;
      const float4 v = r < rows ? load4(X + r * s_r + k, k_end - k) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      t.v[it * 4] = v.x, t.v[it * 4 + 1] = v.y, t.v[it * 4 + 2] = v.z, t.v[it * 4 + 3] = v.w;
    }
  } else if (mode == TILE_VEC_ROWS) {
#pragma unroll
    for (int it = 0; it < GEMM_TILE_PER_THREAD / 4; it++) {
      const int s = tid + it * GEMM_THREADS, k = k0 + s / (GEMM_BM / 4), r = r0 + (s % (GEMM_BM / 4)) * 4;
      const float4 v = k < k_end ? load4(X + k * s_k + r, rows - r) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      t.v[it * 4] = v.x, t.v[it * 4 + 1] = v.y, t.v[it * 4 + 2] = v.z, t.v[it * 4 + 3] = v.w;
    }
  } else {
    const bool along_k = mode == TILE_SCALAR_K;
#pragma unroll
    for (int it = 0; it < GEMM_TILE_PER_THREAD; it++) {
      const int s = tid + it * GEMM_THREADS;
      const int r = r0 + (along_k ? s / GEMM_BK : s % GEMM_BM), k = k0 + (along_k ? s % GEMM_BK : s / GEMM_BM);
      t.v[it] = r < rows && k < k_end ? X[r * s_r + k * s_k] : 0.0f;
    }
  }
}

template <typename Smem, int LDS>
__device__ __forceinline__ void tile_store(typename Smem::T (*S)[LDS], const TileRegs& t, TileMode mode, int tid) {
  if (mode == TILE_VEC_K) {
#pragma unroll
    for (int it = 0; it < GEMM_TILE_PER_THREAD / 4; it++) {
      const int s = tid + it * GEMM_THREADS, r = s / (GEMM_BK / 4), k = (s % (GEMM_BK / 4)) * 4;
#pragma unroll
      for (int j = 0; j < 4; j++) S[r][k + j] = Smem::convert(t.v[it * 4 + j]);
    }
  } else if (mode == TILE_VEC_ROWS) {
#pragma unroll
    for (int it = 0; it < GEMM_TILE_PER_THREAD / 4; it++) {
      const int s = tid + it * GEMM_THREADS, k = s / (GEMM_BM / 4), r = (s % (GEMM_BM / 4)) * 4;
#pragma unroll
      for (int j = 0; j < 4; j++) S[r + j][k] = Smem::convert(t.v[it * 4 + j]);
    }
  } else {
    const bool along_k = mode == TILE_SCALAR_K;
#pragma unroll
    for (int it = 0; it < GEMM_TILE_PER_THREAD; it++) {
      const int s = tid + it * GEMM_THREADS;
      S[along_k ? s / GEMM_BK : s % GEMM_BM][along_k ? s % GEMM_BK : s / GEMM_BM] = Smem::convert(t.v[it]);
    }
  }
}

struct GemmPlan {
  SplitK sk;
  TileMode a_mode, b_mode;
};

template <int MODE>
__global__ void __launch_bounds__(GEMM_THREADS) gemm_kernel(GemmArgs g, GemmPlan plan) {
  const SplitK& sk = plan.sk;
  using Smem = GemmSmem<MODE>;
  using T = typename Smem::T;
  constexpr int LDS = GEMM_BK + Smem::PAD;
  // The operand tiles and, once they are done with, the accumulator tile share one buffer.
  constexpr int AB_BYTES = (GEMM_BM + GEMM_BN) * LDS * sizeof(T), C_BYTES = GEMM_BM * (GEMM_BN + 4) * sizeof(float);
  __shared__ __align__(128) unsigned char smem[AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES];
  T(*As)[LDS] = reinterpret_cast<T(*)[LDS]>(smem);
  T(*Bs)[LDS] = reinterpret_cast<T(*)[LDS]>(smem + GEMM_BM * LDS * sizeof(T));
  float(*Cs)[GEMM_BN + 4] = reinterpret_cast<float(*)[GEMM_BN + 4]>(smem);
  __shared__ int last_slice;

  const int tid = threadIdx.x;
  const int z = blockIdx.z / sk.slices, slice = blockIdx.z % sk.slices;
  const int m0 = blockIdx.y * GEMM_BM, n0 = blockIdx.x * GEMM_BN;
  const float* A = g.A + z * g.a_batch;
  const float* B = g.B + z * g.b_batch;
  const int k_per_slice = static_cast<int>(dm::ceil_div(dm::ceil_div(g.K, GEMM_BK), sk.slices)) * GEMM_BK;
  const int k_begin = slice * k_per_slice, k_end = min(g.K, k_begin + k_per_slice);

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr bool tensor_cores = MODE != PRECISION_FP32;
#else
  constexpr bool tensor_cores = false;
#endif
  // SIMT accumulators: thread (ty, tx) owns rows ty + 8i and columns tx + 16j.
  const int tx = tid % 16, ty = tid / 16;
  float acc[8][4] = {};
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // Tensor-core accumulators: warp (wm, wn) owns a 32 x 32 quarter as 2 x 2 fragments.
  const int warp = tid / 32, wm = warp / 2, wn = warp % 2;
  using namespace nvcuda;
  constexpr int FK = MODE == PRECISION_BF16 ? 16 : 8;
  using FragT = typename std::conditional<MODE == PRECISION_BF16, __nv_bfloat16, wmma::precision::tf32>::type;
  wmma::fragment<wmma::accumulator, 16, 16, FK, float> cf[2][2];
  if (tensor_cores)
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 2; j++) wmma::fill_fragment(cf[i][j], 0.0f);
#endif

  TileRegs ra, rb;
  if (k_begin < k_end) {
    tile_load(ra, A, g.a_m, g.a_k, m0, g.M, k_begin, k_end, plan.a_mode, tid);
    tile_load(rb, B, g.b_n, g.b_k, n0, g.N, k_begin, k_end, plan.b_mode, tid);
  }
  for (int k0 = k_begin; k0 < k_end; k0 += GEMM_BK) {
    tile_store<Smem, LDS>(As, ra, plan.a_mode, tid);
    tile_store<Smem, LDS>(Bs, rb, plan.b_mode, tid);
    __syncthreads();
    if (k0 + GEMM_BK < k_end) {  // the next tile's loads fly while this one is multiplied
      tile_load(ra, A, g.a_m, g.a_k, m0, g.M, k0 + GEMM_BK, k_end, plan.a_mode, tid);
      tile_load(rb, B, g.b_n, g.b_k, n0, g.N, k0 + GEMM_BK, k_end, plan.b_mode, tid);
    }
    __syncthreads();
    if (tensor_cores) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
      for (int kk = 0; kk < GEMM_BK; kk += FK) {
        wmma::fragment<wmma::matrix_a, 16, 16, FK, FragT, wmma::row_major> af[2];
        wmma::fragment<wmma::matrix_b, 16, 16, FK, FragT, wmma::col_major> bf[2];
        for (int i = 0; i < 2; i++) wmma::load_matrix_sync(af[i], &As[wm * 32 + i * 16][kk], LDS);
        for (int j = 0; j < 2; j++) wmma::load_matrix_sync(bf[j], &Bs[wn * 32 + j * 16][kk], LDS);
        for (int i = 0; i < 2; i++)
          for (int j = 0; j < 2; j++) wmma::mma_sync(cf[i][j], af[i], bf[j], cf[i][j]);
      }
#endif
    } else {
#pragma unroll 4
      for (int kk = 0; kk < GEMM_BK; kk++) {
        float a[8], b[4];
#pragma unroll
        for (int i = 0; i < 8; i++) a[i] = static_cast<float>(As[ty + 8 * i][kk]);
#pragma unroll
        for (int j = 0; j < 4; j++) b[j] = static_cast<float>(Bs[tx + 16 * j][kk]);
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
          for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }

  if (tensor_cores) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 2; j++)
        wmma::store_matrix_sync(&Cs[wm * 32 + i * 16][wn * 32 + j * 16], cf[i][j], GEMM_BN + 4, wmma::mem_row_major);
#endif
  } else {
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) Cs[ty + 8 * i][tx + 16 * j] = acc[i][j];
  }
  __syncthreads();

  if (sk.slices > 1) {
    // Every slice adds its partial tile into the tile's accumulator (zero between launches);
    // the last to arrive reads the sum, clears the accumulator and runs the epilogue.
    const int tile = (z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    float* sums = sk.workspace + static_cast<int64_t>(tile) * sk.copies * GEMM_BM * GEMM_BN;
    float* mine = sums + (slice % sk.copies) * GEMM_BM * GEMM_BN;
    for (int i = tid; i < GEMM_BM * GEMM_BN; i += GEMM_THREADS)
      if (m0 + i / GEMM_BN < g.M && n0 + i % GEMM_BN < g.N) atomicAdd(mine + i, Cs[i / GEMM_BN][i % GEMM_BN]);
    __threadfence();
    __syncthreads();
    if (tid == 0) {
      last_slice = atomicAdd(&sk.tickets[tile], 1) == sk.slices - 1;
      if (last_slice) sk.tickets[tile] = 0;  // ready for the next launch
    }
    __syncthreads();
    if (!last_slice) return;
    __threadfence();
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int i = tid * 4; i < GEMM_BM * GEMM_BN; i += GEMM_THREADS * 4) {
      float4 v = zero;
      for (int cp = 0; cp < sk.copies; cp++) {
        float4* at = reinterpret_cast<float4*>(sums + cp * GEMM_BM * GEMM_BN + i);
        const float4 p = __ldcg(at);
        __stcg(at, zero);
        v.x += p.x, v.y += p.y, v.z += p.z, v.w += p.w;
      }
      float* c = &Cs[i / GEMM_BN][i % GEMM_BN];
      c[0] = v.x, c[1] = v.y, c[2] = v.z, c[3] = v.w;
    }
    __syncthreads();
  }

  // Epilogue: a thread owns one column (its bias read once) and every other row; rows unrolled
  // so that their residual and branch loads are in flight together.
  const int c = tid % GEMM_BN, gn = n0 + c;
  if (gn >= g.N) return;
  const float bias = g.bias ? g.bias[z * g.bias_batch + gn] : 0.0f;
#pragma unroll 8
  for (int r = tid / GEMM_BN; r < GEMM_BM; r += GEMM_THREADS / GEMM_BN) {
    const int gm = m0 + r;
    if (gm >= g.M) continue;
    float v = g.alpha * Cs[r][c] + bias;
    const int64_t at = z * g.c_batch + static_cast<int64_t>(gm) * g.c_m + gn;
    if (g.epilogue == EPILOGUE_GELU) {
      if (g.aux) g.aux[at] = v;
      v = dm::gelu(v);
    } else if (g.epilogue == EPILOGUE_STAGE) {
      const int64_t rc = static_cast<int64_t>(gm) * g.c_m + gn;
      float branch_sum = 0.0f;
      for (int j = 0; j < g.nsum; j++) branch_sum += g.extra[j * g.extra_batch + rc];
      v = dm::stage_combine(g.resid[rc], v, branch_sum, g.scale);
    }
    if (g.beta != 0.0f) v += g.beta * g.C[at];
    g.C[at] = v;
  }
}

// ================================ attention =====================================================
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

// Rows r0 .. r0+KT-1 of two row-strided matrices (a at a[r*lda + d], b at b[r*ldb + d]) into
// shared tiles, rows at or past `valid` zeroed. UNROLL loads per thread in flight at once (all
// of them in the forward; fewer where the backward kernels would spill registers).
template <int D, int KT, int UNROLL>
__device__ __forceinline__ void attention_tile_pair(const float* a, int64_t lda, const float* b, int64_t ldb, int valid,
                                                    float (*as)[D], float (*bs)[D], int tid) {
#pragma unroll UNROLL
  for (int it = 0; it < KT * D / 128; it++) {
    const int i = tid + it * 128, j = i / D, d = i % D;
    as[j][d] = j < valid ? a[j * lda + d] : 0.0f;
    bs[j][d] = j < valid ? b[j * ldb + d] : 0.0f;
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

template <int D>
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
    qv[t] = q[t * S::TPQ + part] * scale;
    acc[t] = 0.0f;
  }
  dm::OnlineSoftmax sm;
  for (int kt = 0; kt < L.T; kt += S::KT) {
    const int kn = min(S::KT, static_cast<int>(L.T) - kt);
    attention_tile_pair<D, S::KT, S::KT * D / 128>(k + kt * ld, ld, v + kt * ld, ld, kn, Ks, Vs, tid);
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
  for (int t = 0; t < S::DP; t++) o[t * S::TPQ + part] = acc[t] * inv;
  if (lse && part == 0) lse[L.stat_offset(b, n, h) + qi] = sm.log_sum_exp();
}

// dQ (and delta = dout . out per query): a query's thread group walks all keys.
template <int D>
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
    qv[t] = q[t * S::TPQ + part] * scale;
    dov[t] = go[t * S::TPQ + part];
    dl = fmaf(dov[t], o[t * S::TPQ + part], dl);
    dq[t] = 0.0f;
  }
  dl = group_sum<S::TPQ>(dl);
  const float l = lse[L.stat_offset(b, n, h) + qr];
  for (int kt = 0; kt < L.T; kt += S::KT) {
    const int kn = min(S::KT, static_cast<int>(L.T) - kt);
    attention_tile_pair<D, S::KT, 8>(k + kt * ld, ld, v + kt * ld, ld, kn, Ks, Vs, tid);
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
  for (int t = 0; t < S::DP; t++) g[t * S::TPQ + part] = dq[t] * scale;
  if (part == 0) delta[L.stat_offset(b, n, h) + qi] = dl;
}

// dK and dV: a key's thread group walks all queries (their q, dout, lse and delta in tiles).
template <int D>
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
    kv[t] = k[t * S::TPQ + part] * scale;
    vv[t] = v[t * S::TPQ + part];
    dk[t] = dv[t] = 0.0f;
  }
  for (int qt = 0; qt < L.T; qt += S::KT) {
    const int qn = min(S::KT, static_cast<int>(L.T) - qt);
    attention_tile_pair<D, S::KT, 8>(q + qt * ld, ld, go + qt * L.ld_out(), L.ld_out(), qn, Qs, Gs, tid);
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
    gk[t * S::TPQ + part] = dk[t] * scale;
    gv[t * S::TPQ + part] = dv[t];
  }
}

// ================================ LayerNorm =====================================================
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
                        float* sum_x_xhat, int64_t batch, int64_t rows, int64_t cols, int64_t x_batch, cudaStream_t s) {
  const int rows_per_block = 256;
  const dim3 grid(static_cast<unsigned>(dm::ceil_div(cols, 32)), static_cast<unsigned>(dm::ceil_div(rows, rows_per_block)),
                  static_cast<unsigned>(batch));
  column_sums_kernel<<<grid, dim3(32, 8), 0, s>>>(x, xin, mean, rstd, sum_x, sum_x_xhat, rows, static_cast<int>(cols),
                                                  rows_per_block, x_batch);
  launched("column sums");
}

// ================================ elementwise and small kernels =================================
__global__ void gelu_backward_kernel(const float* dy, const float* x, float* dx, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dx[i] = dy[i] * dm::gelu_grad(x[i]);
}

// One warp per row of logits.
__global__ void cross_entropy_kernel(const float* logits, const int32_t* labels, float* loss, float* dlogits,
                                     int64_t B, int K, float smoothing) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= B) return;
  const float* z = logits + r * K;
  float m = -INFINITY, zsum = 0.0f;
  for (int c = lane; c < K; c += 32) m = fmaxf(m, z[c]), zsum += z[c];
  m = warp_max(m);
  zsum = warp_sum(zsum);
  float s = 0.0f;
  for (int c = lane; c < K; c += 32) s += expf(z[c] - m);
  s = warp_sum(s);
  const int y = labels[r];
  const float inv_b = 1.0f / static_cast<float>(B), off = smoothing / K, on = 1.0f - smoothing + off;
  for (int c = lane; c < K; c += 32) dlogits[r * K + c] = (expf(z[c] - m) / s - (c == y ? on : off)) * inv_b;
  const float lse = m + logf(s);
  if (lane == 0) atomicAdd(loss, ((1.0f - smoothing) * (lse - z[y]) + smoothing * (lse - zsum / K)) * inv_b);
}

// One block per token: its patch's pixels in shared memory, then a thread per output channel
// (consecutive channels read consecutive weights of the transposed matrix).
__global__ void embed_kernel(const float* images, const float* w, int64_t w_k, int64_t w_c, const float* bias,
                             const float* cls, const float* pos, float* x, int channels, int S, int P, int C) {
  extern __shared__ float pix[];  // channels * P * P
  const int grid = S / P, T1 = grid * grid + 1, K = channels * P * P;
  const int t = blockIdx.x % T1;
  const int64_t b = blockIdx.x / T1;
  if (t > 0)
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      const int ch = k / (P * P), py = (k / P) % P, px = k % P;
      pix[k] = images[dm::patch_pixel(b, ch, t, py, px, channels, S, P)];
    }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float v = cls[c];
    if (t > 0) {
      float acc[4] = {bias[c], 0.0f, 0.0f, 0.0f};  // four chains: loads stay in flight
      int k = 0;
      for (; k + 4 <= K; k += 4)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[j] = fmaf(w[(k + j) * w_k + c * w_c], pix[k + j], acc[j]);
      for (; k < K; k++) acc[0] = fmaf(w[k * w_k + c * w_c], pix[k], acc[0]);
      v = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
    x[(b * T1 + t) * C + c] = v + pos[t * C + c];
  }
}

// One block per image: the class token's LayerNorm in shared memory, then one class per thread.
__global__ void __launch_bounds__(128) head_kernel(const float* x, const float* norm_w, const float* norm_b,
                                                   const float* head_w, const float* head_b, float* logits,
                                                   int T1, int C, int K, float eps) {
  extern __shared__ float y[];  // C floats
  __shared__ float partial[4];
  const int b = blockIdx.x, tid = threadIdx.x;
  const float* row = x + static_cast<int64_t>(b) * T1 * C;
  auto block_sum = [&](float v) {
    v = warp_sum(v);
    if (tid % 32 == 0) partial[tid / 32] = v;
    __syncthreads();
    const float total = partial[0] + partial[1] + partial[2] + partial[3];
    __syncthreads();
    return total;
  };
  float s = 0.0f;
  for (int c = tid; c < C; c += 128) s += row[c];
  const float mu = block_sum(s) / C;
  float sq = 0.0f;
  for (int c = tid; c < C; c += 128) sq += (row[c] - mu) * (row[c] - mu);
  const float rs = dm::layernorm_rstd(block_sum(sq), C, eps);
  for (int c = tid; c < C; c += 128) y[c] = (row[c] - mu) * rs * norm_w[c] + norm_b[c];
  __syncthreads();
  for (int k = tid / 32; k < K; k += 4) {  // a warp per class, lanes over the width
    float v = 0.0f;
    for (int c = tid % 32; c < C; c += 32) v = fmaf(y[c], head_w[static_cast<int64_t>(k) * C + c], v);
    v = warp_sum(v);
    if (tid % 32 == 0) logits[static_cast<int64_t>(b) * K + k] = v + head_b[k];
  }
}

constexpr int ADAMW_MAX_TENSORS = 32;
struct AdamWBatch {
  AdamWTensor t[ADAMW_MAX_TENSORS];
  int count;
  float beta1, beta2, eps, bc1, inv_sqrt_bc2, grad_scale;
};

// grid.y = tensor, grid.x strides over its elements. The table travels as a kernel parameter.
__global__ void adamw_kernel(const AdamWBatch batch) {
  const AdamWTensor& t = batch.t[blockIdx.y];
  const float decay = 1.0f - t.lr * t.weight_decay, step_size = t.lr / batch.bc1;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < t.n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    t.param[i] = dm::adamw_element(t.param[i], t.grad[i] * batch.grad_scale, t.m + i, t.v + i, batch.beta1, batch.beta2, batch.eps,
                                   decay, step_size, batch.inv_sqrt_bc2);
}

// ---- training helpers ---------------------------------------------------------------------------
// One warp per output row (n, o): wf = w * g, bf = w . beta + b.
__global__ void fold_affine_forward_kernel(const float* w, const float* b, const float* g, const float* beta,
                                           float* wf, float* bf, int64_t N, int O, int C) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N * O) return;
  const int64_t n = row / O;
  float dot = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float wv = w[row * C + c];
    wf[row * C + c] = wv * g[n * C + c];
    dot = fmaf(wv, beta[n * C + c], dot);
  }
  dot = warp_sum(dot);
  if (lane == 0) bf[row] = dot + b[row];
}

// A thread per column (n, c) walks the O rows: dw written, dg and dbeta summed; db copied.
__global__ void fold_affine_backward_kernel(const float* w, const float* g, const float* beta, const float* dwf,
                                            const float* dbf, float* dw, float* db, float* dg, float* dbeta, int O,
                                            int C) {
  const int64_t n = blockIdx.y;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (blockIdx.x == 0)
    for (int o = threadIdx.x; o < O; o += blockDim.x) db[n * O + o] = dbf[n * O + o];
  if (c >= C) return;
  const float gc = g[n * C + c], bc = beta[n * C + c];
  float sg = 0.0f, sb = 0.0f;
#pragma unroll 4
  for (int o = 0; o < O; o++) {
    const int64_t at = (n * O + o) * C + c;
    const float d = dwf[at], wv = w[at], dbo = dbf[n * O + o];
    dw[at] = d * gc + dbo * bc;
    sg = fmaf(d, wv, sg);
    sb = fmaf(dbo, wv, sb);
  }
  dg[n * C + c] = sg;
  dbeta[n * C + c] = sb;
}

__global__ void branch_concat_forward_kernel(const float* w, const float* b, float* cat, float* bsum, int64_t N, int64_t C,
                                             int64_t M) {
  const int64_t total = N * C * M;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i % M, c = (i / M) % C, n = i / (M * C);
    cat[c * N * M + n * M + m] = w[i];
    if (i < C) {
      float v = 0.0f;
      for (int64_t k = 0; k < N; k++) v += b[k * C + i];
      bsum[i] = v;
    }
  }
}

__global__ void branch_concat_backward_kernel(const float* dcat, const float* dbsum, float scale, float* dw, float* db,
                                              int64_t N, int64_t C, int64_t M) {
  const int64_t total = N * C * M;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i % M, c = (i / M) % C, n = i / (M * C);
    dw[i] = dcat[c * N * M + n * M + m];
    if (i < N * C) db[i] = scale * dbsum[i % C];
  }
}

__global__ void branch_residual_backward_kernel(const float* dv, const float* dy, float scale, float* da, float* dx,
                                                int64_t N, int64_t n_elems) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_elems;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float direct = scale * dy[i];
    float sum = 0.0f;
    for (int64_t n = 0; n < N; n++) {
      const float v = dv[n * n_elems + i];
      da[n * n_elems + i] = v + direct;
      sum += v;
    }
    dx[i] += sum;
  }
}

// A thread per (c, k) of the weight walks every (image, token); threads with k = 0 also sum the
// bias gradient.
__global__ void embed_backward_weight_kernel(const float* images, const float* dx, float* dw, float* dbias, int64_t B,
                                             int channels, int S, int P, int C) {
  const int K = channels * P * P, grid = S / P, T1 = grid * grid + 1;
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= C * K) return;
  const int c = idx % C, k = idx / C;  // consecutive threads: consecutive channels (coalesced dx)
  const int ch = k / (P * P), py = (k / P) % P, px = k % P;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, bias = 0.0f;
  for (int64_t b = 0; b < B; b++)
#pragma unroll 4
    for (int t = 1; t < T1; t++) {
      const float g = dx[(b * T1 + t) * C + c];
      acc[t & 3] = fmaf(g, images[dm::patch_pixel(b, ch, t, py, px, channels, S, P)], acc[t & 3]);
      bias += g;
    }
  dw[static_cast<int64_t>(c) * K + k] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  if (k == 0) dbias[c] = bias;
}

__global__ void embed_backward_tokens_kernel(const float* dx, float* dcls, float* dpos, int64_t B, int T1, int C) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= T1 * C) return;
  float v = 0.0f;
  for (int64_t b = 0; b < B; b++) v += dx[b * T1 * C + idx];
  dpos[idx] = v;
  if (idx < C) dcls[idx] = v;
}

__global__ void copy_rows_kernel(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int64_t rows,
                                 int64_t cols) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[(i / cols) * dst_stride + i % cols] = src[(i / cols) * src_stride + i % cols];
}

struct SquaresBatch {
  const float* p[ADAMW_MAX_TENSORS];
  int64_t n[ADAMW_MAX_TENSORS];
};

// grid.y = tensor; a block's partial sum goes to *out with one atomic.
__global__ void sum_of_squares_kernel(const SquaresBatch batch, float* out) {
  __shared__ float partial[8];
  const float* p = batch.p[blockIdx.y];
  const int64_t n = batch.n[blockIdx.y];
  float acc = 0.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    acc = fmaf(p[i], p[i], acc);
  acc = warp_sum(acc);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); w++) total += partial[w];
    atomicAdd(out, total);
  }
}

unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(dm::ceil_div(n, 256), 8LL * device_sms())));
}

}  // namespace

const char* precision_name(Precision p) {
  switch (p) {
    case PRECISION_TF32: return "tf32";
    case PRECISION_BF16: return "bf16";
    default: return "fp32";
  }
}

Precision effective_precision(Precision p) { return device_major() >= 8 ? p : PRECISION_FP32; }

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    fail(e == cudaErrorMemoryAllocation ? ERROR_OUT_OF_MEMORY : ERROR_DEVICE,
         std::string("CUDA error in ") + what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

int64_t launch_count() { return g_launches.load(std::memory_order_relaxed); }

void gemm(const GemmArgs& g, Precision p, cudaStream_t s) {
  if (g.M <= 0 || g.N <= 0 || g.batch <= 0) return;
  const int64_t tiles_x = dm::ceil_div(g.N, GEMM_BN), tiles_y = dm::ceil_div(g.M, GEMM_BM);
  const int64_t tiles = tiles_x * tiles_y * g.batch;
  // Split the inner dimension when the tiles alone leave most multiprocessors idle (small
  // batches): slices of at least SPLITK_MIN_STEPS steps, about SPLITK_BLOCKS_PER_SM blocks per
  // multiprocessor in all, partial tiles added into SPLITK_COPIES accumulators per tile (fewer
  // atomics on one address). Chosen by a sweep on an H100 at batch 1 (bench/results/gpu-h100.md).
  SplitK sk;
  const int64_t k_steps = dm::ceil_div(g.K, GEMM_BK);
  if (tiles < device_sms() && k_steps >= 2 * SPLITK_MIN_STEPS) {
    const int64_t want = std::min<int64_t>({k_steps / SPLITK_MIN_STEPS, dm::ceil_div(SPLITK_BLOCKS_PER_SM * device_sms(), tiles), 128});
    const int64_t per_slice = dm::ceil_div(k_steps, want);
    sk.slices = static_cast<int>(dm::ceil_div(k_steps, per_slice));  // no empty slices
    sk.copies = std::min(sk.slices, SPLITK_COPIES);
  }
  if (sk.slices > 1) {
    Workspace& w = gemm_workspace(tiles * sk.copies * GEMM_BM * GEMM_BN, tiles);
    sk.workspace = w.partials;
    sk.tickets = w.tickets;
  }
  const dim3 grid(static_cast<unsigned>(tiles_x), static_cast<unsigned>(tiles_y),
                  static_cast<unsigned>(g.batch * sk.slices));
  const GemmPlan plan{sk, tile_mode(g.A, g.a_m, g.a_k, g.a_batch), tile_mode(g.B, g.b_n, g.b_k, g.b_batch)};
  switch (effective_precision(p)) {
    case PRECISION_TF32: gemm_kernel<PRECISION_TF32><<<grid, GEMM_THREADS, 0, s>>>(g, plan); break;
    case PRECISION_BF16: gemm_kernel<PRECISION_BF16><<<grid, GEMM_THREADS, 0, s>>>(g, plan); break;
    default: gemm_kernel<PRECISION_FP32><<<grid, GEMM_THREADS, 0, s>>>(g, plan); break;
  }
  launched("gemm");
}

namespace {

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

// The grid of the attention kernels: (query or key groups, N*H, B).
template <int D>
dim3 attention_grid(const dm::AttnLayout& L, int64_t B) {
  return dim3(static_cast<unsigned>(dm::ceil_div(L.T, AttnShape<D>::QPB)), static_cast<unsigned>(L.N * L.H),
              static_cast<unsigned>(B));
}

}  // namespace

void layernorm_forward(const float* x, const float* resid, int64_t resid_rows, const float* gamma, const float* beta,
                       float* y, float* mean, float* rstd, int64_t rows, int64_t C, float eps, cudaStream_t s) {
  if (rows <= 0) return;
  const dim3 grid(static_cast<unsigned>(dm::ceil_div(rows, 4)));
  launch_by_vpl<LayerNormForward>(C, grid, s, x, resid, resid_rows > 0 ? resid_rows : rows, gamma, beta, y, mean,
                                  rstd, rows, static_cast<int>(C), eps);
  launched("layerNorm forward");
}

void layernorm_backward(const float* dy, const float* x, const float* resid, int64_t resid_rows, const float* mean,
                        const float* rstd, const float* gamma, float* dx, float* dgamma, float* dbeta, int64_t rows,
                        int64_t C, bool accumulate, cudaStream_t s) {
  if (rows <= 0) return;
  if (resid && (dgamma || dbeta)) fail(ERROR_DEVICE, "layerNorm backward: dgamma/dbeta with a residual input");
  const dim3 grid(static_cast<unsigned>(dm::ceil_div(rows, 4)));
  launch_by_vpl<LayerNormBackward>(C, grid, s, dy, x, resid, resid_rows > 0 ? resid_rows : rows, mean, rstd, gamma, dx,
                                   rows, static_cast<int>(C), accumulate);
  launched("layerNorm backward");
  if (dgamma || dbeta) launch_column_sums(dy, x, mean, rstd, dbeta, dgamma, 1, rows, C, 0, s);
}

void attention_forward(const float* qkv, float* out, float* lse, int64_t B, int64_t T, int64_t N, int64_t H,
                       int64_t D, cudaStream_t s) {
  if (B <= 0 || T <= 0) return;
  const dm::AttnLayout L{T, H * D, N, H, D};
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  switch (D) {
    case 8: attention_forward_kernel<8><<<attention_grid<8>(L, B), 128, 0, s>>>(qkv, out, lse, L, scale); break;
    case 16: attention_forward_kernel<16><<<attention_grid<16>(L, B), 128, 0, s>>>(qkv, out, lse, L, scale); break;
    case 32: attention_forward_kernel<32><<<attention_grid<32>(L, B), 128, 0, s>>>(qkv, out, lse, L, scale); break;
    case 64: attention_forward_kernel<64><<<attention_grid<64>(L, B), 128, 0, s>>>(qkv, out, lse, L, scale); break;
    case 128: attention_forward_kernel<128><<<attention_grid<128>(L, B), 128, 0, s>>>(qkv, out, lse, L, scale); break;
    default: fail(ERROR_DEVICE, "attention on CUDA supports head sizes 8, 16, 32, 64 and 128, got " + std::to_string(D));
  }
  launched("attention forward");
}

void attention_backward(const float* dout, const float* qkv, const float* out, const float* lse, float* delta,
                        float* dqkv, int64_t B, int64_t T, int64_t N, int64_t H, int64_t D, cudaStream_t s) {
  if (B <= 0 || T <= 0) return;
  const dm::AttnLayout L{T, H * D, N, H, D};
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  dim3 grid;
#define DUAT_ATTN_BWD(DV)                                                                              \
  case DV:                                                                                             \
    grid = attention_grid<DV>(L, B);                                                                   \
    attention_backward_dq_kernel<DV><<<grid, 128, 0, s>>>(dout, qkv, out, lse, delta, dqkv, L, scale); \
    launched("attention backward (dq)");                                                               \
    attention_backward_dkv_kernel<DV><<<grid, 128, 0, s>>>(dout, qkv, lse, delta, dqkv, L, scale);     \
    break;
  switch (D) {
    DUAT_ATTN_BWD(8)
    DUAT_ATTN_BWD(16)
    DUAT_ATTN_BWD(32)
    DUAT_ATTN_BWD(64)
    DUAT_ATTN_BWD(128)
    default: fail(ERROR_DEVICE, "attention on CUDA supports head sizes 8, 16, 32, 64 and 128, got " + std::to_string(D));
  }
#undef DUAT_ATTN_BWD
  launched("attention backward (dk, dv)");
}

void gelu_backward(const float* dy, const float* x, float* dx, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  gelu_backward_kernel<<<elementwise_blocks(n), 256, 0, s>>>(dy, x, dx, n);
  launched("gelu backward");
}

void sum_rows(const float* x, float* out, int64_t batch, int64_t rows, int64_t cols, int64_t x_batch, bool accumulate,
              cudaStream_t s) {
  if (!accumulate) check_cuda(cudaMemsetAsync(out, 0, batch * cols * sizeof(float), s), "sum_rows (clear)");
  if (rows <= 0 || batch <= 0) return;
  launch_column_sums(x, nullptr, nullptr, nullptr, out, nullptr, batch, rows, cols, x_batch, s);
}

void cross_entropy(const float* logits, const int32_t* labels, float* loss, float* dlogits, int64_t B, int64_t K,
                   float smoothing, cudaStream_t s) {
  check_cuda(cudaMemsetAsync(loss, 0, sizeof(float), s), "cross entropy (clear)");
  cross_entropy_kernel<<<static_cast<unsigned>(dm::ceil_div(B, 4)), 128, 0, s>>>(logits, labels, loss, dlogits, B,
                                                                                  static_cast<int>(K), smoothing);
  launched("cross entropy");
}

void embed_forward(const float* images, const float* patch_w, int64_t w_k, int64_t w_c, const float* patch_b,
                   const float* cls, const float* pos, float* x, int64_t B, int64_t channels, int64_t S, int64_t P,
                   int64_t C, cudaStream_t s) {
  const int64_t T1 = (S / P) * (S / P) + 1;
  embed_kernel<<<static_cast<unsigned>(B * T1), static_cast<unsigned>(std::min<int64_t>(C, 256)),
                 channels * P * P * sizeof(float), s>>>(images, patch_w, w_k, w_c, patch_b, cls, pos, x,
                                                        static_cast<int>(channels), static_cast<int>(S),
                                                        static_cast<int>(P), static_cast<int>(C));
  launched("patch embedding");
}

void head_forward(const float* x, const float* norm_w, const float* norm_b, const float* head_w,
                  const float* head_b, float* logits, int64_t B, int64_t T1, int64_t C, int64_t K, float eps,
                  cudaStream_t s) {
  head_kernel<<<static_cast<unsigned>(B), 128, C * sizeof(float), s>>>(x, norm_w, norm_b, head_w, head_b, logits,
                                                                       static_cast<int>(T1), static_cast<int>(C),
                                                                       static_cast<int>(K), eps);
  launched("head");
}

void fold_affine_forward(const float* w, const float* b, const float* g, const float* beta, float* wf, float* bf,
                         int64_t N, int64_t O, int64_t C, cudaStream_t s) {
  fold_affine_forward_kernel<<<static_cast<unsigned>(dm::ceil_div(N * O, 4)), 128, 0, s>>>(
      w, b, g, beta, wf, bf, N, static_cast<int>(O), static_cast<int>(C));
  launched("fold affine forward");
}

void fold_affine_backward(const float* w, const float* g, const float* beta, const float* dwf, const float* dbf,
                          float* dw, float* db, float* dg, float* dbeta, int64_t N, int64_t O, int64_t C,
                          cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(dm::ceil_div(C, 64)), static_cast<unsigned>(N));
  fold_affine_backward_kernel<<<grid, 64, 0, s>>>(w, g, beta, dwf, dbf, dw, db, dg, dbeta, static_cast<int>(O),
                                                   static_cast<int>(C));
  launched("fold affine backward");
}

void branch_concat_forward(const float* w, const float* b, float* cat, float* bsum, int64_t N, int64_t C, int64_t M,
                           cudaStream_t s) {
  branch_concat_forward_kernel<<<elementwise_blocks(N * C * M), 256, 0, s>>>(w, b, cat, bsum, N, C, M);
  launched("branch concat forward");
}

void branch_concat_backward(const float* dcat, const float* dbsum, float scale, float* dw, float* db, int64_t N,
                            int64_t C, int64_t M, cudaStream_t s) {
  branch_concat_backward_kernel<<<elementwise_blocks(N * C * M), 256, 0, s>>>(dcat, dbsum, scale, dw, db, N, C, M);
  launched("branch concat backward");
}

void branch_residual_backward(const float* dv, const float* dy, float scale, float* da, float* dx, int64_t N,
                              int64_t rows, int64_t C, cudaStream_t s) {
  branch_residual_backward_kernel<<<elementwise_blocks(rows * C), 256, 0, s>>>(dv, dy, scale, da, dx, N, rows * C);
  launched("branch residual backward");
}

void embed_backward(const float* images, const float* dx, float* dw, float* dbias, float* dcls, float* dpos, int64_t B,
                    int64_t channels, int64_t S, int64_t P, int64_t C, cudaStream_t s) {
  const int64_t K = channels * P * P, T1 = (S / P) * (S / P) + 1;
  embed_backward_weight_kernel<<<static_cast<unsigned>(dm::ceil_div(C * K, 128)), 128, 0, s>>>(
      images, dx, dw, dbias, B, static_cast<int>(channels), static_cast<int>(S), static_cast<int>(P), static_cast<int>(C));
  launched("patch embedding backward (weights)");
  embed_backward_tokens_kernel<<<static_cast<unsigned>(dm::ceil_div(T1 * C, 128)), 128, 0, s>>>(
      dx, dcls, dpos, B, static_cast<int>(T1), static_cast<int>(C));
  launched("patch embedding backward (tokens)");
}

void copy_rows(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int64_t rows, int64_t cols,
               cudaStream_t s) {
  copy_rows_kernel<<<elementwise_blocks(rows * cols), 256, 0, s>>>(src, src_stride, dst, dst_stride, rows, cols);
  launched("copy rows");
}

void adamw_multi(const std::vector<AdamWTensor>& tensors, float beta1, float beta2, float eps, int64_t step,
                 float grad_scale, cudaStream_t s) {
  AdamWBatch batch{};
  batch.grad_scale = grad_scale;
  batch.beta1 = beta1;
  batch.beta2 = beta2;
  batch.eps = eps;
  const float bc1 = 1.0f - powf(beta1, static_cast<float>(step)), bc2 = 1.0f - powf(beta2, static_cast<float>(step));
  batch.bc1 = bc1;
  batch.inv_sqrt_bc2 = 1.0f / sqrtf(bc2);
  for (size_t first = 0; first < tensors.size(); first += ADAMW_MAX_TENSORS) {
    batch.count = static_cast<int>(std::min<size_t>(ADAMW_MAX_TENSORS, tensors.size() - first));
    int64_t largest = 1;
    for (int i = 0; i < batch.count; i++) {
      batch.t[i] = tensors[first + i];
      largest = std::max(largest, batch.t[i].n);
    }
    const dim3 grid(std::min<unsigned>(elementwise_blocks(largest), 64u), static_cast<unsigned>(batch.count));
    adamw_kernel<<<grid, 256, 0, s>>>(batch);
    launched("adamw");
  }
}

void sum_of_squares(const std::vector<std::pair<const float*, int64_t>>& tensors, float* out, cudaStream_t s) {
  check_cuda(cudaMemsetAsync(out, 0, sizeof(float), s), "sum of squares (clear)");
  for (size_t first = 0; first < tensors.size(); first += ADAMW_MAX_TENSORS) {
    SquaresBatch batch{};
    const size_t count = std::min<size_t>(ADAMW_MAX_TENSORS, tensors.size() - first);
    int64_t largest = 1;
    for (size_t i = 0; i < count; i++) {
      batch.p[i] = tensors[first + i].first;
      batch.n[i] = tensors[first + i].second;
      largest = std::max(largest, batch.n[i]);
    }
    const dim3 grid(std::min<unsigned>(elementwise_blocks(largest), 64u), static_cast<unsigned>(count));
    sum_of_squares_kernel<<<grid, 256, 0, s>>>(batch, out);
    launched("sum of squares");
  }
}

}  // namespace cuda
}  // namespace duat
