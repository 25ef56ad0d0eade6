// gemm.cu: the strided, batched matrix product with fused epilogues (GemmArgs, core/backend.h).
// One kernel serves every layout and precision: fp32 on CUDA cores (the reference), TF32 or BF16
// on tensor cores (WMMA, float accumulators); split-K for products whose tiles leave the device
// idle. Verified on an H100 (bench/results/gpu-h100.md) before it moved here unchanged.
#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <type_traits>

#include "common.cuh"

namespace duat {
namespace cuda {

namespace {

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


}  // namespace

void gemm(const GemmArgs& g, Precision p) {
  cudaStream_t s = stream();
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

}  // namespace cuda
}  // namespace duat
