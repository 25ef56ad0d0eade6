// gemm.cpp: packed, cache-blocked GEMM in the style of BLIS / tinyBLAS.
// Loop nest: jc (chunks of up to GemmTuning::chunk_cols columns of B) -> chunks of K up to
// B_CHUNK_BYTES of packed B (packed once, shared; one K block on one thread when C fits in L2
// beside it) -> tasks over (MC block of A rows x a share of the columns), each walking the chunk's
// KC blocks: pack A block, then MR x NR micro-kernels, column panel by column panel or row of
// tiles by row of tiles (GemmTuning::tile_rows_outer). C rows stay in cache across K blocks, and a
// product opens two parallel regions per chunk rather than per K block.
// Each thread runs a contiguous share of the tasks (parallel_for_shares), so its rows of A and C
// stream in order, then takes what is left at the end of the others' shares, so a core slowed by
// a neighbour does not hold the others up.
// Packing zero-pads partial panels, so micro-kernels always run full tiles; the edge tiles
// are written through a small buffer. Accumulation is fp32 throughout.
#include "gemm.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/syscall.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "../core/errors.h"
#include "../core/parallel.h"
#include "amx.h"
#include "bf16.h"
#include "kernels.h"
#include "math.h"
#include "math_avx512.h"
#include "peak.h"

namespace duat {

const GemmTuning GEMM_TUNING_AMD{false, false, 4096, false};
const GemmTuning GEMM_TUNING_INTEL{true, true, 1024, true};

float* line_aligned(std::vector<float>& v, int64_t n) {
  v.resize(static_cast<size_t>(n + 16));
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t{63});
}

namespace {

// A tile's share of a product's GELU output or input (GemmAct, p or pre at the tile's first
// element; grad_sums at its first column's sums); stream_c: the tile's C is stored past the caches
// (sgemm_streams_c); first_rows: a backward act's tile begins its block of rows (its sums start
// from zero).
struct TileAct : GemmAct {
  bool stream_c;
  bool first_rows = false;
};

struct KernelInfo {
  int mr, nr;
  // c[mr x nr] (ldc) (+)= alpha * a_panel(kc x MR) . b_panel(kc x NR) (+ bias[0..nr) per row, when
  // bias is non-null); `add` false overwrites. The A panel's MR values of one k are contiguous,
  // lda apart from k to k: MR when packed, the matrix's row stride when a transposed A is read
  // in place. The B panel's rows are ldb apart: NR when packed, the matrix's row stride when B
  // is read in place. In-place panels are full (MR rows, NR columns).
  void (*micro)(int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int mr,
                int nr, float alpha, bool add, const float* bias);
  // The same with a row-major A read in place: row i of the panel at a + i * lda (null: pack A).
  void (*micro_rows)(int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                     int mr, int nr, float alpha, bool add, const float* bias);
  // micro for a C whose rows alias in L1 (null: micro).
  void (*micro_staged)(int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                       int mr, int nr, float alpha, bool add, const float* bias);
  // bf16 panels (micro_bf16), where the CPU has AVX512_BF16 (null: fp32 only).
  void (*micro_bf16)(int64_t ku, const float* a, int64_t, const float* b, int64_t, float* c, int64_t ldc, int mr,
                     int nr, float alpha, bool add, const float* bias);
  // micro (staged: micro_staged; bf16: micro_bf16) that also writes act = gelu(c) for the tile, on
  // the last K block of a product with a GELU output (null: the GELU runs over finished blocks instead).
  void (*micro_bf16_act)(int64_t ku, const float* a, int64_t, const float* b, int64_t, float* c, int64_t ldc, int mr,
                         int nr, float alpha, bool add, const float* bias, const TileAct& act);
  void (*micro_act)(int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                    int mr, int nr, float alpha, bool add, const float* bias, const TileAct& act);
  void (*micro_staged_act)(int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                           int mr, int nr, float alpha, bool add, const float* bias, const TileAct& act);
};

// ---- portable: 4 x 16, plain loops the compiler vectorises with SSE2 ----
void micro_generic(int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                   int mr, int nr, float alpha, bool add, const float* bias) {
  constexpr int MR = 4, NR = 16;
  float acc[MR][NR] = {};
  for (int64_t k = 0; k < kc; k++) {
    for (int i = 0; i < MR; i++)
      for (int j = 0; j < NR; j++) acc[i][j] += a[i] * b[j];
    a += lda;
    b += ldb;
  }
  for (int i = 0; i < mr; i++)
    for (int j = 0; j < nr; j++)
      c[i * ldc + j] = (add ? c[i * ldc + j] : 0.0f) + alpha * acc[i][j] + (bias ? bias[j] : 0.0f);
}

#if defined(__x86_64__)
// ---- AVX2 + FMA: 6 x 16, twelve ymm accumulators ----
__attribute__((target("avx2,fma"))) void micro_avx2(int64_t kc, const float* a, int64_t lda, const float* b,
                                                     int64_t ldb, float* c, int64_t ldc, int mr, int nr, float alpha,
                                                     bool add, const float* bias) {
  constexpr int MR = 6;
  __m256 acc[MR][2];
  for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; k++) {
    __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
      __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += lda;
    b += ldb;
  }
  __m256 va = _mm256_set1_ps(alpha);
  if (mr == MR && nr == 16) {
    const __m256 bias0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    const __m256 bias1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
    for (int i = 0; i < MR; i++) {
      float* ci = c + i * ldc;
      __m256 r0 = _mm256_fmadd_ps(va, acc[i][0], bias0), r1 = _mm256_fmadd_ps(va, acc[i][1], bias1);
      if (add) {
        r0 = _mm256_add_ps(r0, _mm256_loadu_ps(ci));
        r1 = _mm256_add_ps(r1, _mm256_loadu_ps(ci + 8));
      }
      _mm256_storeu_ps(ci, r0);
      _mm256_storeu_ps(ci + 8, r1);
    }
    return;
  }
  alignas(32) float tile[MR][16];
  for (int i = 0; i < MR; i++) {
    _mm256_store_ps(tile[i], _mm256_mul_ps(va, acc[i][0]));
    _mm256_store_ps(tile[i] + 8, _mm256_mul_ps(va, acc[i][1]));
  }
  for (int i = 0; i < mr; i++)
    for (int j = 0; j < nr; j++) c[i * ldc + j] = (add ? c[i * ldc + j] : 0.0f) + tile[i][j] + (bias ? bias[j] : 0.0f);
}

// ---- AVX-512: 12 x 32, twenty-four zmm accumulators, masked edge stores ----
// Sixteen columns of a tile row, those set in m: a plain store when all are. Where a kernel's time
// goes into its stores (the staged tiles, the GELU output, attention's small products, the
// register transposes), the masked store with every lane set costs more.
__attribute__((target("avx512f"), always_inline)) inline void store_cols(float* p, __mmask16 m, __m512 v) {
  if (m == 0xFFFF) {
    _mm512_storeu_ps(p, v);
  } else {
    _mm512_mask_storeu_ps(p, m, v);
  }
}

// One row of a tile, its 32 columns those set in m0 | m1: streamed past the caches (`stream`)
// where the row is whole and 64-byte aligned, else plain stores.
__attribute__((target("avx512f"), always_inline)) inline void store_tile_row(float* p, __mmask16 m0, __mmask16 m1,
                                                                               __m512 r0, __m512 r1, bool stream) {
  if (stream && m1 == 0xFFFF && (reinterpret_cast<uintptr_t>(p) & 63) == 0) {
    _mm512_stream_ps(p, r0);
    _mm512_stream_ps(p + 16, r1);
  } else {
    store_cols(p, m0, r0);
    store_cols(p + 16, m1, r1);
  }
}

// One row of a tile's GELU: act = gelu(r0 | r1) (math_avx512.h, as the row kernels compute it);
// columns below nr only.
__attribute__((target("avx512f"), always_inline)) inline void gelu_row_avx512(
    __m512 r0, __m512 r1, float* act, __mmask16 m0, __mmask16 m1) {
  store_cols(act, m0, gelu_avx512(r0));
  store_cols(act + 16, m1, gelu_avx512(r1));
}

// GCC 12 reports the undefined-register idiom of the conversions and extracts below, once
// inlined, as a maybe-uninitialized read (as for the transposes further down).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// GELU's backward over a tile's rows (TileAct with grad_sums): each row r0 | r1 times gelu'(x) of
// the pre-activation row x, stored to c, and added in fp64 to the tile's four vectors of column
// sums s, row after row: the values and the sums of gelu_backward_rows_cpu (kernels.h).
__attribute__((target("avx512f"), always_inline)) inline void gelu_grad_row_avx512(
    __m512 r0, __m512 r1, const float* x, float* c, __mmask16 m0, __mmask16 m1, __m512d (&s)[4]) {
  r0 = _mm512_mul_ps(r0, gelu_grad_avx512(_mm512_maskz_loadu_ps(m0, x)));
  r1 = _mm512_mul_ps(r1, gelu_grad_avx512(_mm512_maskz_loadu_ps(m1, x + 16)));
  store_cols(c, m0, r0);
  store_cols(c + 16, m1, r1);
  s[0] = _mm512_add_pd(s[0], _mm512_cvtps_pd(_mm512_castps512_ps256(r0)));
  s[1] = _mm512_add_pd(s[1], _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(r0), 1))));
  s[2] = _mm512_add_pd(s[2], _mm512_cvtps_pd(_mm512_castps512_ps256(r1)));
  s[3] = _mm512_add_pd(s[3], _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(r1), 1))));
}

// The column sums of a backward act's tile, its nr columns: loaded (zero where it begins its
// block of rows), and stored back.
__attribute__((target("avx512f"), always_inline)) inline void load_grad_sums(const TileAct& act, int nr,
                                                                               __m512d (&s)[4]) {
  for (int q = 0; q < 4; q++) {
    const int cols = std::max(0, std::min(8, nr - 8 * q));
    const __mmask8 m = static_cast<__mmask8>((1u << cols) - 1);
    s[q] = act.first_rows ? _mm512_setzero_pd() : _mm512_maskz_loadu_pd(m, act.grad_sums + 8 * q);
  }
}
__attribute__((target("avx512f"), always_inline)) inline void store_grad_sums(const TileAct& act, int nr,
                                                                                const __m512d (&s)[4]) {
  for (int q = 0; q < 4; q++) {
    const int cols = std::max(0, std::min(8, nr - 8 * q));
    _mm512_mask_storeu_pd(act.grad_sums + 8 * q, static_cast<__mmask8>((1u << cols) - 1), s[q]);
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Writes an MR x 32 tile of accumulators: c = alpha * acc (+ bias per column) (+ c when add);
// rows below mr and columns below nr only; with `act`, also act = gelu(c) there, and c streamed
// past the caches when act->stream_c (act itself is cached: the next product reads it); with a
// backward act (grad_sums), c times gelu'(act) instead, and the column sums.
template <int MR = 12>
__attribute__((target("avx512f"), always_inline)) inline void store_tile_avx512(
    const __m512 (&acc)[MR][2], float* c, int64_t ldc, int mr, int nr, float alpha, bool add, const float* bias,
    const TileAct* act = nullptr) {
  const bool stream = act && act->stream_c && !add;
  const __m512 va = _mm512_set1_ps(alpha);
  const __mmask16 m0 = nr >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : static_cast<__mmask16>((1u << (nr - 16)) - 1);
  const __m512 bias0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
  const __m512 bias1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
  const bool grad = act && act->grad_sums;
  __m512d sums[4];
  if (grad) load_grad_sums(*act, nr, sums);
#pragma GCC unroll 12
  for (int i = 0; i < MR; i++) {
    if (i >= mr) break;
    float* ci = c + i * ldc;
    __m512 r0 = _mm512_fmadd_ps(va, acc[i][0], bias0), r1 = _mm512_fmadd_ps(va, acc[i][1], bias1);
    if (add) {
      r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(m0, ci));
      r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(m1, ci + 16));
    }
    if (grad) {
      gelu_grad_row_avx512(r0, r1, act->pre + i * act->ld, ci, m0, m1, sums);
      continue;
    }
    store_tile_row(ci, m0, m1, r0, r1, stream);
    if (act) gelu_row_avx512(r0, r1, act->p + i * act->ld, m0, m1);
  }
  if (grad) store_grad_sums(*act, nr, sums);
}

// ROWS: A row-major in place (row i at a + i * lda, k contiguous); else k-major panels lda apart.
// MR rows of accumulators (12 for the packed panels; fewer for a short A read in place).
template <bool ROWS, int MR = 12>
__attribute__((target("avx512f"), always_inline)) inline void micro_avx512_body(
    int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int mr, int nr,
    float alpha, bool add, const float* bias, const TileAct* act = nullptr) {
  __m512 acc[MR][2];
#pragma GCC unroll 12
  for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; k++) {
    __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
      __m512 ai = _mm512_set1_ps(ROWS ? a[i * lda] : a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += ROWS ? 1 : lda;
    b += ldb;
  }
  store_tile_avx512<MR>(acc, c, ldc, mr, nr, alpha, add, bias, act);
}

// micro_avx512_body with as many rows of accumulators as the tile has (an edge tile, or a
// 50-row A cut into five tiles of 10, computes no padded rows).
template <bool ROWS>
__attribute__((target("avx512f"), always_inline)) inline void micro_avx512_rows_of(
    int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int mr, int nr,
    float alpha, bool add, const float* bias, const TileAct* act = nullptr) {
  switch (mr) {
    case 1: return micro_avx512_body<ROWS, 1>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
    case 2: return micro_avx512_body<ROWS, 2>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
    case 3: return micro_avx512_body<ROWS, 3>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
    case 4: return micro_avx512_body<ROWS, 4>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
    case 5: return micro_avx512_body<ROWS, 5>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
    case 6: return micro_avx512_body<ROWS, 6>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
    case 7: return micro_avx512_body<ROWS, 7>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
    case 8: return micro_avx512_body<ROWS, 8>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
    case 9: return micro_avx512_body<ROWS, 9>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
    case 10: return micro_avx512_body<ROWS, 10>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
    case 11: return micro_avx512_body<ROWS, 11>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
    default: return micro_avx512_body<ROWS, 12>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, act);
  }
}

__attribute__((target("avx512f"))) void micro_avx512(int64_t kc, const float* a, int64_t lda, const float* b,
                                                      int64_t ldb, float* c, int64_t ldc, int mr, int nr, float alpha,
                                                      bool add, const float* bias) {
  micro_avx512_rows_of<false>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias);
}
__attribute__((target("avx512f"))) void micro_avx512_act(int64_t kc, const float* a, int64_t lda, const float* b,
                                                          int64_t ldb, float* c, int64_t ldc, int mr, int nr,
                                                          float alpha, bool add, const float* bias, const TileAct& act) {
  micro_avx512_rows_of<false>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, &act);
}
// micro_avx512 for a C whose rows meet in the same L1 sets (a row stride of a multiple of 4 KiB:
// 3200 x 3072 x 192, 12.5 -> 10 ms): the tile is summed into an L1 buffer, then copied out.
__attribute__((target("avx512f"), always_inline)) inline void micro_avx512_staged_body(
    int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int mr, int nr,
    float alpha, bool add, const float* bias, const TileAct* act) {
  constexpr int MR = 12, NR = 32;
  alignas(64) float tile[MR * NR];
  micro_avx512_body<false>(kc, a, lda, b, ldb, tile, NR, MR, NR, alpha, false, bias);
  // Copied out here, plain stores where the tile is full (store_tile_avx512 over the loaded tile,
  // with its masked stores, measured 10% slower).
  const __mmask16 m0 = nr >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : static_cast<__mmask16>((1u << (nr - 16)) - 1);
  const bool stream = act && act->stream_c && !add;
  const bool grad = act && act->grad_sums;
  __m512d sums[4];
  if (grad) load_grad_sums(*act, nr, sums);
  for (int i = 0; i < mr; i++) {
    float* ci = c + i * ldc;
    __m512 r0 = _mm512_load_ps(tile + i * NR), r1 = _mm512_load_ps(tile + i * NR + 16);
    if (add) {
      r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(m0, ci));
      r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(m1, ci + 16));
    }
    if (grad) {
      gelu_grad_row_avx512(r0, r1, act->pre + i * act->ld, ci, m0, m1, sums);
      continue;
    }
    store_tile_row(ci, m0, m1, r0, r1, stream);
    if (act) gelu_row_avx512(r0, r1, act->p + i * act->ld, m0, m1);
  }
  if (grad) store_grad_sums(*act, nr, sums);
}
__attribute__((target("avx512f"))) void micro_avx512_staged(int64_t kc, const float* a, int64_t lda, const float* b,
                                                             int64_t ldb, float* c, int64_t ldc, int mr, int nr,
                                                             float alpha, bool add, const float* bias) {
  micro_avx512_staged_body(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, nullptr);
}
__attribute__((target("avx512f"))) void micro_avx512_staged_act(int64_t kc, const float* a, int64_t lda,
                                                                 const float* b, int64_t ldb, float* c, int64_t ldc,
                                                                 int mr, int nr, float alpha, bool add,
                                                                 const float* bias, const TileAct& act) {
  micro_avx512_staged_body(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias, &act);
}
__attribute__((target("avx512f"))) void micro_avx512_rows(int64_t kc, const float* a, int64_t lda, const float* b,
                                                           int64_t ldb, float* c, int64_t ldc, int mr, int nr,
                                                           float alpha, bool add, const float* bias) {
  micro_avx512_rows_of<true>(kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, add, bias);
}

// ---- bf16 products, fp32 sums (AVX512_BF16): 12 x 32 with vdpbf16ps ----
// Panels hold bf16 pairs: one 32-bit unit per (pair of k, row or column), the even k in its low
// half. `ku` counts pairs of k; a panel's units are MR (A) or NR (B) apart from pair to pair.
__attribute__((target("avx512f,avx512bf16"), always_inline)) inline void micro_bf16_body(
    int64_t ku, const float* a_, const float* b_, float* c, int64_t ldc, int mr, int nr, float alpha, bool add,
    const float* bias, const TileAct* act) {
  constexpr int MR = 12;
  const uint32_t* a = reinterpret_cast<const uint32_t*>(a_);
  const uint32_t* b = reinterpret_cast<const uint32_t*>(b_);
  __m512 acc[MR][2];
#pragma GCC unroll 12
  for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < ku; k++) {
    const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
      const __m512i ai = _mm512_set1_epi32(static_cast<int>(a[i]));
      acc[i][0] = dpbf16(acc[i][0], ai, b0);
      acc[i][1] = dpbf16(acc[i][1], ai, b1);
    }
    a += MR;
    b += 32;
  }
  store_tile_avx512(acc, c, ldc, mr, nr, alpha, add, bias, act);
}
__attribute__((target("avx512f,avx512bf16"))) void micro_bf16(int64_t ku, const float* a, int64_t, const float* b,
                                                               int64_t, float* c, int64_t ldc, int mr, int nr,
                                                               float alpha, bool add, const float* bias) {
  micro_bf16_body(ku, a, b, c, ldc, mr, nr, alpha, add, bias, nullptr);
}
__attribute__((target("avx512f,avx512bf16"))) void micro_bf16_act(int64_t ku, const float* a, int64_t,
                                                                   const float* b, int64_t, float* c, int64_t ldc,
                                                                   int mr, int nr, float alpha, bool add,
                                                                   const float* bias, const TileAct& act) {
  micro_bf16_body(ku, a, b, c, ldc, mr, nr, alpha, add, bias, &act);
}

// ---- bf16 products on AMX tiles, fp32 sums: 32 x 32 as four 16 x 16 tiles ----
// The tiles are named in inline assembly (as bf16.h does vdpbf16ps): C in tmm0-3 (rows 0-15 x
// columns 0-15, 0-15 x 16-31, 16-31 x 0-15, 16-31 x 16-31), A in tmm4-5, B in tmm6-7; every tile
// 16 rows of 64 bytes (load_tile_config). A is packed row by row (pack_a_amx: row i's pairs of k
// contiguous, rows a_units apart); B is the bf16 panel (pack_b_panel_bf16: pair after pair, 32
// columns each), so a B tile is 16 pairs of 16 columns, 128 bytes apart. ku is a multiple of 16.
struct alignas(64) AmxConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
// Sets this thread's tiles up for micro_amx (tile state is per thread; a task sets it once).
void load_tile_config() {
  AmxConfig cfg;
  for (int t = 0; t < 8; t++) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}
// Gives the tiles back (their state no longer saved and restored with the thread's).
void release_tiles() { __asm__ volatile("tilerelease" ::: "memory"); }

// c[mr x nr] (+)= alpha * a(mr x 2ku) . b(2ku x nr) (+ bias), the tiles' sums written through
// store_tile_avx512 (act too): mr, nr <= 32; rows of A past mr are read (packing pads them).
__attribute__((target("avx512f"))) void micro_amx(int64_t ku, const uint32_t* a, int64_t a_units, const uint32_t* b,
                                                  float* c, int64_t ldc, int mr, int nr, float alpha, bool add,
                                                  const float* bias, const TileAct* act) {
  const bool two = mr > 16;
  const int64_t a_stride = a_units * 4;
  DUAT_TILEZERO(0);
  DUAT_TILEZERO(1);
  if (two) {
    DUAT_TILEZERO(2);
    DUAT_TILEZERO(3);
  }
  for (int64_t kk = 0; kk < ku; kk += 16) {
    DUAT_TILELOAD(6, b + kk * 32, 128);
    DUAT_TILELOAD(7, b + kk * 32 + 16, 128);
    DUAT_TILELOAD(4, a + kk, a_stride);
    DUAT_TDP(0, 4, 6);
    DUAT_TDP(1, 4, 7);
    if (two) {
      DUAT_TILELOAD(5, a + 16 * a_units + kk, a_stride);
      DUAT_TDP(2, 5, 6);
      DUAT_TDP(3, 5, 7);
    }
  }
  alignas(64) float sums[32][32];
  DUAT_TILESTORE(0, &sums[0][0], 128);
  DUAT_TILESTORE(1, &sums[0][16], 128);
  if (two) {
    DUAT_TILESTORE(2, &sums[16][0], 128);
    DUAT_TILESTORE(3, &sums[16][16], 128);
  }
  for (int h = 0; h < (two ? 2 : 1); h++) {
    __m512 acc[16][2];
    for (int i = 0; i < 16; i++) {
      acc[i][0] = _mm512_load_ps(&sums[16 * h + i][0]);
      acc[i][1] = _mm512_load_ps(&sums[16 * h + i][16]);
    }
    TileAct half{};
    if (act) {
      half = *act;
      if (half.p) half.p += 16 * h * act->ld;
    }
    store_tile_avx512<16>(acc, c + 16 * h * ldc, ldc, std::min(16, mr - 16 * h), nr, alpha, add, bias,
                          act ? &half : nullptr);
  }
}

// GCC 12 reports the undefined-register idiom of _mm512_max_ps (in the column maximum below), once
// inlined, as an uninitialised read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
constexpr int SMALL_ROWS = 6, SMALL_NV = 4;

// ---- small products without packing: ROWS rows x NV 16-wide vectors of C held in registers
// while k runs (up to 6 x 4 = 24 zmm accumulators); B rows read in place (row-major op(B)), the
// last vector masked to the columns left. What becomes of each finished vector of sums is the
// epilogue's (Epi): a plain store, or one of attention's steps (SmallThen, gemm.h) ----
template <int ROWS, int NV, bool TRANS_A, class Epi>
__attribute__((target("avx512f"))) void small_tile_avx512(int64_t i0, int64_t j0, __mmask16 tail, int64_t K,
                                                          const float* A, int64_t lda, const float* B, int64_t ldb,
                                                          const Epi& epilogue) {
  Epi epi = epilogue;  // a local copy: its fields stay in registers across the stores to C
  epi.begin();
  __m512 acc[ROWS][NV];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
  const float* a_col = TRANS_A ? A + i0 : A + i0 * lda;
  const float* b = B + j0;
  for (int64_t k = 0; k < K; k++, b += ldb) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
      bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; r++) {
      const __m512 a = _mm512_set1_ps(TRANS_A ? a_col[k * lda + r] : a_col[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(a, bv[v], acc[r][v]);
    }
  }
  // Row after row (a row's vectors stored together: column after column, the tiles of the
  // per-head products ran 8-15% slower on two threads).
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) epi.row(i0 + r, j0 + 16 * v, v, v == NV - 1 ? tail : 0xFFFF, acc[r][v]);
#pragma GCC unroll 4
  for (int v = 0; v < NV; v++) epi.column_done(j0 + 16 * v, v, v == NV - 1 ? tail : 0xFFFF);
}

#define DUAT_EPI_INLINE __attribute__((target("avx512f"), always_inline)) inline
// What every epilogue holds: C, its row stride and alpha; and the hooks most leave empty.
struct SmallEpilogue {
  float alpha;
  float* C;
  int64_t ldc;
  DUAT_EPI_INLINE __m512 scaled(__m512 acc) const { return _mm512_mul_ps(_mm512_set1_ps(alpha), acc); }
  DUAT_EPI_INLINE void begin() {}
  DUAT_EPI_INLINE void column_done(int64_t, int, __mmask16) {}
};
// C = alpha * sums + beta * C.
struct SmallStore : SmallEpilogue {
  float beta;
  DUAT_EPI_INLINE void row(int64_t i, int64_t j, int, __mmask16 m, __m512 acc) const {
    float* c = C + i * ldc + j;
    __m512 out = scaled(acc);
    if (beta != 0.0f) out = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(m, c), out);
    store_cols(c, m, out);
  }
};
// SmallThen::col_max: C = alpha * sums, and the tile's rows' maximum of each column into col.
struct SmallColMax : SmallEpilogue {
  float* col;
  __m512 max[SMALL_NV] = {};  // of the tile's rows so far, per vector (begin sets them)
  DUAT_EPI_INLINE void row(int64_t i, int64_t j, int v, __mmask16 m, __m512 acc) {
    const __m512 out = scaled(acc);
    store_cols(C + i * ldc + j, m, out);
    max[v] = _mm512_max_ps(out, max[v]);
  }
  DUAT_EPI_INLINE void begin() {
    for (__m512& x : max) x = _mm512_set1_ps(-INFINITY);
  }
  DUAT_EPI_INLINE void column_done(int64_t j, int v, __mmask16 m) {
    _mm512_mask_storeu_ps(col + j, m, _mm512_max_ps(max[v], _mm512_maskz_loadu_ps(m, col + j)));
  }
};
// SmallThen::exp_shift: C = exp(alpha * sums - col[j]).
struct SmallExpShift : SmallEpilogue {
  const float* col;
  DUAT_EPI_INLINE void row(int64_t i, int64_t j, int, __mmask16 m, __m512 acc) const {
    store_cols(C + i * ldc + j, m, exp_avx512(_mm512_sub_ps(scaled(acc), _mm512_maskz_loadu_ps(m, col + j))));
  }
};
// SmallThen::row_scale: C = alpha * sums * row[i].
struct SmallRowScale : SmallEpilogue {
  const float* rows;
  DUAT_EPI_INLINE void row(int64_t i, int64_t j, int, __mmask16 m, __m512 acc) const {
    store_cols(C + i * ldc + j, m, _mm512_mul_ps(scaled(acc), _mm512_set1_ps(rows[i])));
  }
};
#undef DUAT_EPI_INLINE

template <class Epi>
using SmallTile = void (*)(int64_t, int64_t, __mmask16, int64_t, const float*, int64_t, const float*, int64_t,
                           const Epi&);

template <bool TRANS_A, class Epi, int... V>
constexpr auto small_tiles_of_rows(std::integer_sequence<int, V...>) {
  return std::array<std::array<SmallTile<Epi>, SMALL_NV>, sizeof...(V)>{
      {{small_tile_avx512<V + 1, 1, TRANS_A, Epi>, small_tile_avx512<V + 1, 2, TRANS_A, Epi>,
        small_tile_avx512<V + 1, 3, TRANS_A, Epi>, small_tile_avx512<V + 1, 4, TRANS_A, Epi>}...}};
}

// The tiles of op(A) op(B) (op(B) row-major, read in place), each handed to epi. Column blocks of
// up to 64 run outermost, so an epilogue's column_done sees each block's rows in order.
template <class Epi>
void small_gemm_avx512(bool transA, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                       int64_t ldb, const Epi& epi) {
  // [transA][rows - 1][vectors - 1]
  static const std::array<std::array<SmallTile<Epi>, SMALL_NV>, SMALL_ROWS> tiles_of[2] = {
      small_tiles_of_rows<false, Epi>(std::make_integer_sequence<int, SMALL_ROWS>{}),
      small_tiles_of_rows<true, Epi>(std::make_integer_sequence<int, SMALL_ROWS>{})};
  const auto& tiles = tiles_of[transA ? 1 : 0];
  for (int64_t j0 = 0; j0 < N; j0 += 16 * SMALL_NV) {
    const int64_t cols = std::min<int64_t>(16 * SMALL_NV, N - j0);
    const int nv = static_cast<int>((cols + 15) / 16);
    const int rem = static_cast<int>(cols - 16 * (nv - 1));
    const __mmask16 tail = static_cast<__mmask16>(rem == 16 ? 0xFFFF : (1u << rem) - 1);
    // Tiles of equal height (50 rows: 5 of 6 and 4 of 5, not 8 of 6 and 1 of 2): a short tile
    // keeps too few sums in flight to hide the FMA latency.
    const int64_t count = (M + SMALL_ROWS - 1) / SMALL_ROWS, base = M / count, taller = M % count;
    for (int64_t t = 0, i = 0; t < count; t++) {
      const int rows = static_cast<int>(base + (t < taller ? 1 : 0));
      tiles[rows - 1][nv - 1](i, j0, tail, K, A, lda, B, ldb, epi);
      i += rows;
    }
  }
}

// out lane r = the sum of the lanes of v[r], r < 16: pairs, then quads, then the 128-bit lanes
// added through unpacks and shuffles (45 instructions for sixteen sums).
__attribute__((target("avx512f"), always_inline)) inline __m512 sum_lanes16(const __m512 (&v)[16]) {
  __m512 s1[8], s2[4];
#pragma GCC unroll 8
  for (int p = 0; p < 8; p++)  // per 128-bit lane: v[2p]'s two partial sums, v[2p+1]'s, interleaved
    s1[p] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * p], v[2 * p + 1]), _mm512_unpackhi_ps(v[2 * p], v[2 * p + 1]));
#pragma GCC unroll 4
  for (int q = 0; q < 4; q++)  // per 128-bit lane: the sums of v[4q] .. v[4q+3]
    s2[q] = _mm512_add_ps(_mm512_shuffle_ps(s1[2 * q], s1[2 * q + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_ps(s1[2 * q], s1[2 * q + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(s2[0], s2[1], 0x44), _mm512_shuffle_f32x4(s2[0], s2[1], 0xEE));
  const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(s2[2], s2[3], 0x44), _mm512_shuffle_f32x4(s2[2], s2[3], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0xDD));
}

// The last TAIL (1 to 4) columns of A B^T from j0, A row-major (M x K) and B's rows those columns
// (K floats each, ldb apart): dot products along k, 16 / TAIL rows of A at a time against every
// column (the sixteen sums of a group, row r and column q in lane r * TAIL + q, gathered into one
// vector), each row's values then handed to the epilogue as one masked vector, and column_done
// called once.
template <int TAIL, class Epi>
__attribute__((target("avx512f"))) void small_tail_dots_avx512(int64_t M, int64_t j0, int64_t K, const float* A,
                                                               int64_t lda, const float* B, int64_t ldb,
                                                               const Epi& epilogue) {
  constexpr int ROWS = 16 / TAIL;
  Epi epi = epilogue;
  epi.begin();
  const __mmask16 cols = static_cast<__mmask16>((1u << TAIL) - 1);
  const __mmask16 k_tail = static_cast<__mmask16>(K % 16 == 0 ? 0xFFFF : (1u << (K % 16)) - 1);
  for (int64_t i0 = 0; i0 < M; i0 += ROWS) {
    const int rows = static_cast<int>(std::min<int64_t>(ROWS, M - i0));
    // Rows past M read the last row again (their sums are not used): the accumulators stay in
    // registers, the loops unrolled.
    const float* a_row[ROWS];
    for (int r = 0; r < ROWS; r++) a_row[r] = A + (i0 + std::min(r, rows - 1)) * lda;
    __m512 acc[16];
#pragma GCC unroll 16
    for (int x = 0; x < 16; x++) acc[x] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 m = k + 16 <= K ? 0xFFFF : k_tail;
      __m512 bv[TAIL];
#pragma GCC unroll 4
      for (int q = 0; q < TAIL; q++) bv[q] = _mm512_maskz_loadu_ps(m, B + (j0 + q) * ldb + k);
#pragma GCC unroll 16
      for (int r = 0; r < ROWS; r++) {
        const __m512 av = _mm512_maskz_loadu_ps(m, a_row[r] + k);
#pragma GCC unroll 4
        for (int q = 0; q < TAIL; q++) acc[r * TAIL + q] = _mm512_fmadd_ps(av, bv[q], acc[r * TAIL + q]);
      }
    }
    alignas(64) float sums[16];  // row r's at sums + r * TAIL (r * TAIL + TAIL <= 16)
    _mm512_store_ps(sums, sum_lanes16(acc));
    for (int r = 0; r < rows; r++) epi.row(i0 + r, j0, 0, cols, _mm512_maskz_loadu_ps(cols, sums + r * TAIL));
  }
  epi.column_done(j0, 0, cols);
}

void row_major_b(bool transB, int64_t N, int64_t K, const float*& B, int64_t& ldb);

// A small product through the epilogue, op(B) in either layout. A transposed B (rows of K floats:
// attention's queries, read against keys) whose last vector of columns would hold at most four:
// those columns as dot products along k (small_tail_dots_avx512), the rest in tiles over a
// transpose of the other rows, so no tile computes a vector for two columns (50 queries: 48 + 2).
template <class Epi>
__attribute__((target("avx512f"))) void small_product_avx512(bool transA, bool transB, int64_t M, int64_t N,
                                                             int64_t K, const float* A, int64_t lda, const float* B,
                                                             int64_t ldb, const Epi& epi) {
  const int tail = static_cast<int>(N % 16);
  if (transB && !transA && N > 16 && tail != 0 && tail <= 4 && K >= 16) {
    const float* b_rows = B;
    const int64_t ld_rows = ldb;
    row_major_b(true, N - tail, K, B, ldb);
    small_gemm_avx512(false, M, N - tail, K, A, lda, B, ldb, epi);
    switch (tail) {
      case 1: return small_tail_dots_avx512<1>(M, N - 1, K, A, lda, b_rows, ld_rows, epi);
      case 2: return small_tail_dots_avx512<2>(M, N - 2, K, A, lda, b_rows, ld_rows, epi);
      case 3: return small_tail_dots_avx512<3>(M, N - 3, K, A, lda, b_rows, ld_rows, epi);
      default: return small_tail_dots_avx512<4>(M, N - 4, K, A, lda, b_rows, ld_rows, epi);
    }
  }
  row_major_b(transB, N, K, B, ldb);
  small_gemm_avx512(transA, M, N, K, A, lda, B, ldb, epi);
}

// sgemm_small_then's tiles.
__attribute__((target("avx512f"))) void small_then_avx512(SmallThen then, bool transA, bool transB, int64_t M,
                                                          int64_t N, int64_t K, float alpha, const float* A,
                                                          int64_t lda, const float* B, int64_t ldb, float* C,
                                                          int64_t ldc, const SmallThenArgs& args) {
  switch (then) {
    case SmallThen::col_max:
      return small_product_avx512(transA, transB, M, N, K, A, lda, B, ldb, SmallColMax{{alpha, C, ldc}, args.max});
    case SmallThen::exp_shift:
      return small_product_avx512(transA, transB, M, N, K, A, lda, B, ldb, SmallExpShift{{alpha, C, ldc}, args.col});
    case SmallThen::row_scale:
      return small_product_avx512(transA, transB, M, N, K, A, lda, B, ldb, SmallRowScale{{alpha, C, ldc}, args.row});
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// GCC 12's unpack and shuffle intrinsics pass _mm512_undefined_ps(), a self-initialised variable
// that -Wmaybe-uninitialized reports once inlined; nothing here is uninitialised.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// dst[c * ldd + r] = src[r * ld + c] (+= when add) for r < rows, c < cols: 16 x 16 blocks through
// registers (unpack, then shuffles of pairs and of 128-bit lanes), edges masked.
__attribute__((target("avx512f"))) void transpose_avx512(const float* src, int64_t ld, int64_t rows, int64_t cols,
                                                         float* dst, int64_t ldd, bool add = false) {
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int nr = static_cast<int>(std::min<int64_t>(16, rows - r0));
    const __mmask16 row_mask = static_cast<__mmask16>(nr == 16 ? 0xFFFF : (1u << nr) - 1);
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int nc = static_cast<int>(std::min<int64_t>(16, cols - c0));
      const __mmask16 col_mask = static_cast<__mmask16>(nc == 16 ? 0xFFFF : (1u << nc) - 1);
      __m512 r[16], t[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; i++)
        r[i] = i >= nr ? _mm512_setzero_ps()
               : nc == 16 ? _mm512_loadu_ps(src + (r0 + i) * ld + c0)
                          : _mm512_maskz_loadu_ps(col_mask, src + (r0 + i) * ld + c0);
#pragma GCC unroll 8
      for (int i = 0; i < 8; i++) {  // per 128-bit lane: rows 2i, 2i+1 interleaved
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      }
#pragma GCC unroll 4
      for (int i = 0; i < 4; i++) {  // r[4i + c], lane L: column 4L + c of rows 4i .. 4i+3
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
#pragma GCC unroll 4
      for (int c = 0; c < 4; c++) {  // gather lane L of r[c], r[4+c], r[8+c], r[12+c]: column 4L + c
        const __m512 even_lo = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), even_hi = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        const __m512 odd_lo = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD), odd_hi = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
        t[c] = _mm512_shuffle_f32x4(even_lo, even_hi, 0x88);
        t[8 + c] = _mm512_shuffle_f32x4(even_lo, even_hi, 0xDD);
        t[4 + c] = _mm512_shuffle_f32x4(odd_lo, odd_hi, 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(odd_lo, odd_hi, 0xDD);
      }
      for (int c = 0; c < nc; c++) {
        float* d = dst + (c0 + c) * ldd + r0;
        store_cols(d, row_mask, add ? _mm512_add_ps(t[c], _mm512_maskz_loadu_ps(row_mask, d)) : t[c]);
      }
    }
  }
}

// pack_b_panel for the 32-wide AVX-512 panels: a row-major op(B) row by row with masked 16-wide
// copies; a transposed one (B's rows are op(B)'s columns) through 16 x 16 register transposes.
__attribute__((target("avx512f"))) void pack_b_panel_avx512(bool trans, const float* B, int64_t ldb, int64_t p0,
                                                            int64_t kc, int64_t j0, int64_t nc, int64_t q, float* out) {
  constexpr int NR = 32;
  const int64_t c0 = q * NR;
  const int cols = static_cast<int>(std::min<int64_t>(NR, nc - c0));
  float* dst = out + c0 * kc;
  if (!trans) {
    const __mmask16 m0 = static_cast<__mmask16>(cols >= 16 ? 0xFFFF : (1u << cols) - 1);
    const __mmask16 m1 = static_cast<__mmask16>(cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (1u << (cols - 16)) - 1);
    for (int64_t k = 0; k < kc; k++) {
      const float* src = B + (p0 + k) * ldb + j0 + c0;
      _mm512_storeu_ps(dst + k * NR, _mm512_maskz_loadu_ps(m0, src));
      _mm512_storeu_ps(dst + k * NR + 16, _mm512_maskz_loadu_ps(m1, src + 16));
    }
    return;
  }
  transpose_avx512(B + (j0 + c0) * ldb + p0, ldb, cols, kc, dst, NR);
  if (cols < NR)
    for (int64_t k = 0; k < kc; k++)
      for (int j = cols; j < NR; j++) dst[k * NR + j] = 0.0f;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#else
// Not x86-64 (arm64 and others): the portable kernel only, which the compiler vectorises for the
// target (NEON on arm64); detect() never selects the entries below, which exist to keep the table.
void micro_avx2(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int, int, float, bool,
                const float*) {}
void micro_avx512(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int, int, float, bool,
                  const float*) {}
void micro_avx512_rows(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int, int, float, bool,
                       const float*) {}
void micro_avx512_staged(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int, int, float, bool,
                         const float*) {}
void micro_avx512_act(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int, int, float, bool,
                      const float*, const TileAct&) {}
void micro_avx512_staged_act(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int, int, float,
                             bool, const float*, const TileAct&) {}
void micro_bf16(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int, int, float, bool,
                const float*) {}
void micro_bf16_act(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int, int, float, bool,
                    const float*, const TileAct&) {}
void transpose_avx512(const float*, int64_t, int64_t, int64_t, float*, int64_t, bool = false) {}
void load_tile_config() {}
void release_tiles() {}
void micro_amx(int64_t, const uint32_t*, int64_t, const uint32_t*, float*, int64_t, int, int, float, bool, const float*,
               const TileAct*) {}
void pack_b_panel_avx512(bool, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float*) {}
#endif  // __x86_64__

const KernelInfo KERNELS[] = {
    {4, 16, micro_generic, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr},
    {6, 16, micro_avx2, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr},
    {12, 32, micro_avx512, micro_avx512_rows, micro_avx512_staged, micro_bf16, micro_bf16_act, micro_avx512_act,
     micro_avx512_staged_act},
};

#if defined(__x86_64__)
// The instruction sets the kernels were compiled for (kernels.cpp: AVX2 with FMA, BMI1/2 and F16C;
// AVX-512 F, VL, BW and DQ), each only when the OS saves the registers it uses (XCR0). Read with
// cpuid directly: __builtin_cpu_supports needs libgcc's __cpu_model, which a clang-built shared
// library cannot reach, and it would not check these companions.
uint64_t os_saved_state() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

CpuIsa detect() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return CPU_ISA_GENERIC;  // no OSXSAVE
  const bool fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return CPU_ISA_GENERIC;
  const bool avx2 = b & (1u << 5), bmi1 = b & (1u << 3), bmi2 = b & (1u << 8);
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31));  // F DQ BW VL
  const uint64_t xcr0 = os_saved_state();
  const bool ymm = (xcr0 & 0x6) == 0x6, zmm = (xcr0 & 0xE6) == 0xE6;
  const bool avx2_set = avx2 && fma && bmi1 && bmi2 && f16c && ymm;
  if (avx2_set && avx512 && zmm) return CPU_ISA_AVX512;
  if (avx2_set) return CPU_ISA_AVX2;
  return CPU_ISA_GENERIC;
}
#else
CpuIsa detect() { return CPU_ISA_GENERIC; }
#endif

bool detect_bf16() {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  return detect() == CPU_ISA_AVX512 && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5));  // AVX512_BF16
#else
  return false;
#endif
}

// AMX with bf16 tiles (AMX-TILE and AMX-BF16), where the CPU has AVX512_BF16 too and Linux lets
// this process use the tile data (its permission is asked for once, for the whole process).
bool detect_amx() {
#if defined(__x86_64__) && defined(__linux__)
  unsigned a, b, c, d;
  if (!detect_bf16() || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!(d & (1u << 24)) || !(d & (1u << 22))) return false;  // AMX-TILE, AMX-BF16
  constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return false;
  return (os_saved_state() & (3u << 17)) == (3u << 17);  // XTILECFG, XTILEDATA
#else
  return false;
#endif
}

CpuIsa initial_isa() {
  CpuIsa best = detect();
  // DUAT_CPU_ISA=generic|avx2|avx512 narrows the choice (for benchmarks and debugging).
  if (const char* env = std::getenv("DUAT_CPU_ISA")) {
    for (int i = 0; i <= CPU_ISA_AVX512; i++)
      if (std::strcmp(env, cpu_isa_name(static_cast<CpuIsa>(i))) == 0 && i <= best) return static_cast<CpuIsa>(i);
  }
  return best;
}

CpuIsa g_isa = initial_isa();

bool cpu_is_intel() {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  // The vendor string is in ebx, edx, ecx: "Genu" "ineI" "ntel".
  return __get_cpuid(0, &a, &b, &c, &d) && b == 0x756e6547 && d == 0x49656e69 && c == 0x6c65746e;
#else
  return false;
#endif
}

GemmTuning initial_tuning() {
  if (const char* env = std::getenv("DUAT_GEMM_TUNING")) {
    if (std::strcmp(env, "amd") == 0) return GEMM_TUNING_AMD;
    if (std::strcmp(env, "intel") == 0) return GEMM_TUNING_INTEL;
  }
  return cpu_is_intel() ? GEMM_TUNING_INTEL : GEMM_TUNING_AMD;
}

GemmTuning g_tuning = initial_tuning();

// dst[c * ldd + r] = src[r * ld + c] (+= when add): through registers with the AVX-512 kernels.
void transpose(const float* src, int64_t ld, int64_t rows, int64_t cols, float* dst, int64_t ldd, bool add) {
  if (g_isa == CPU_ISA_AVX512) return transpose_avx512(src, ld, rows, cols, dst, ldd, add);
  for (int64_t c = 0; c < cols; c++)
    for (int64_t r = 0; r < rows; r++) dst[c * ldd + r] = (add ? dst[c * ldd + r] : 0.0f) + src[r * ld + c];
}

// The unpacked path reads op(B) row-major: a transposed B is first laid out so (K x N) in thread
// scratch, and B and ldb point there.
void row_major_b(bool transB, int64_t N, int64_t K, const float*& B, int64_t& ldb) {
  if (!transB) return;
  thread_local std::vector<float> bt;
  bt.resize(static_cast<size_t>(K * N));
  transpose(B, ldb, N, K, bt.data(), N, false);
  B = bt.data();
  ldb = N;
}

void unpacked_product(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                      int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
#if defined(__x86_64__)
  if (g_isa == CPU_ISA_AVX512)
    return small_product_avx512(transA, transB, M, N, K, A, lda, B, ldb, SmallStore{{alpha, C, ldc}, beta});
#endif
  row_major_b(transB, N, K, B, ldb);
  small_gemm_rows_cpu(transA, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// Block sizes: a KC x NR panel of B stays in L1, an MC x KC block of A in L2.
constexpr int64_t KC = 256;
constexpr int64_t MC_ROWS = 144;  // a multiple of every MR above
constexpr int64_t ROW_UNIT = 12;   // every MR above divides it; row blocks are multiples of it
constexpr int64_t SMALL_GEMM_MAX = int64_t{1} << 17;  // M*N*K below which packing does not pay
constexpr int64_t B_CHUNK_BYTES = int64_t{8} << 20;  // packed B shared by the tasks of one region
// The L2 size assumed where the system does not say (sysconf, glibc's, reads it from cpuid).
constexpr int64_t L2_FALLBACK_BYTES = int64_t{512} << 10;
constexpr int64_t SPLIT_K_NARROW_N = 256;  // columns of C up to which K splits from K > M + N
constexpr int64_t SWAP_MIN_K = 1024;  // K from which A^T B with 2M <= N runs as (B^T A)^T
constexpr int64_t DIRECT_B_MAX_M = 96;  // rows up to which a row-major B is read in place
constexpr int64_t DIRECT_A_MAX_PANELS = 8;  // column panels per task up to which a row-major A is read in place
// The same for the products that read B in place: column panels per thread up to which A's rows
// are read in place (50 rows on 2 threads: 24 panels 1.25x faster in place, 72 panels 1.1x slower).
constexpr int64_t DIRECT_B_ROWS_MAX_PANELS = 16;
// The pre-activation C of a product with a GELU output, from this size, written once (beta 0, K in
// one block), is stored past the caches: training keeps it for GELU's backward, which reads it
// long after, from memory either way; a plain store would first read each line from memory and
// push out lines of the operands. fc1 of Para-Former-1-4 and ViT-4: 2.5% and 4.8% faster; other
// outputs, which the next op reads at once, were no faster streamed (bench/results/cpu-ab-gelu-stream.md).
constexpr int64_t STREAM_C_MIN_BYTES = int64_t{2} << 20;

// After a task's streamed stores: they reach memory before the task's end is seen by another thread.
void store_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

// Scratch of 64-byte aligned floats that only grows (t_pack_a per thread, the leases' pool).
struct Buffer {
  float* p = nullptr;
  size_t n = 0;
  Buffer() = default;
  Buffer(const Buffer&) = delete;  // a copy would free the block its original still holds
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : p(std::exchange(o.p, nullptr)), n(std::exchange(o.n, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(p, o.p);
    std::swap(n, o.n);
    return *this;
  }
  ~Buffer() { std::free(p); }
  float* get(size_t count) {
    if (count > n) {
      std::free(p);
      p = static_cast<float*>(std::aligned_alloc(64, (count * 4 + 63) / 64 * 64));
      if (!p) fail(ERROR_OUT_OF_MEMORY, "out of memory packing a matrix product");
      n = count;
    }
    return p;
  }
};

// A transposed A's rows p0 .. p0+kc (columns i0 .. i0+mc), packed into panels of MR: each row's mc
// values copied out together, in order down A, the row PACK_AHEAD_ROWS further down asked for
// meanwhile. Its rows are lda apart, a page or more each; a prefetcher that stays within a page
// (Intel's L2 streamer) would leave every row to wait on memory.
constexpr int64_t PACK_AHEAD_ROWS = 8;
void prefetch_span(const float* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < n * 4 + 63; b += 64) __builtin_prefetch(c + b, 0, 3);
}
#if defined(__x86_64__)
// Four rows of k at a time where there are four: a panel's 4 x 12 values are three whole vectors,
// stored as such, where one masked store of 12 for each row would cross a cache line every other
// row (a C++ harness packing 3072 columns of a 3200-row A^T in strips of 144, one thread: 3.7 -> 3.3 ms).
__attribute__((target("avx512f"))) void pack_a_trans_avx512(const float* A, int64_t lda, int64_t i0, int64_t mc,
                                                            int64_t p0, int64_t kc, float* out) {
  constexpr int MR = 12;
  const int64_t panels = (mc + MR - 1) / MR;
  // Lanes of the two rows each vector takes from (16 + j: the second's lane j).
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19);
  const __m512i second = _mm512_setr_epi32(4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23);
  const __m512i third = _mm512_setr_epi32(8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27);
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    const float* src = A + (p0 + k) * lda + i0;
    for (int64_t j = 0; j < 4; j++)
      if (k + j + PACK_AHEAD_ROWS < kc) prefetch_span(src + (j + PACK_AHEAD_ROWS) * lda, mc);
    for (int64_t r = 0; r < panels; r++) {
      const __mmask16 m = static_cast<__mmask16>((1u << std::min<int64_t>(MR, mc - r * MR)) - 1);  // zero padded
      const __m512 a0 = _mm512_maskz_loadu_ps(m, src + r * MR), a1 = _mm512_maskz_loadu_ps(m, src + lda + r * MR);
      const __m512 a2 = _mm512_maskz_loadu_ps(m, src + 2 * lda + r * MR);
      const __m512 a3 = _mm512_maskz_loadu_ps(m, src + 3 * lda + r * MR);
      float* dst = out + r * MR * kc + k * MR;
      _mm512_storeu_ps(dst, _mm512_permutex2var_ps(a0, first, a1));
      _mm512_storeu_ps(dst + 16, _mm512_permutex2var_ps(a1, second, a2));
      _mm512_storeu_ps(dst + 32, _mm512_permutex2var_ps(a2, third, a3));
    }
  }
  for (; k < kc; k++) {
    const float* src = A + (p0 + k) * lda + i0;
    if (k + PACK_AHEAD_ROWS < kc) prefetch_span(src + PACK_AHEAD_ROWS * lda, mc);
    for (int64_t r = 0; r < panels; r++) {
      const int rows = static_cast<int>(std::min<int64_t>(MR, mc - r * MR));
      const __m512 v = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << rows) - 1), src + r * MR);
      _mm512_mask_storeu_ps(out + r * MR * kc + k * MR, static_cast<__mmask16>((1u << MR) - 1), v);  // zero padded
    }
  }
}
#endif
void pack_a_trans(const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t p0, int64_t kc, int MR, float* out) {
#if defined(__x86_64__)
  if (g_isa == CPU_ISA_AVX512 && MR == 12) return pack_a_trans_avx512(A, lda, i0, mc, p0, kc, out);
#endif
  for (int64_t k = 0; k < kc; k++) {
    const float* src = A + (p0 + k) * lda + i0;
    if (k + PACK_AHEAD_ROWS < kc) prefetch_span(src + PACK_AHEAD_ROWS * lda, mc);
    for (int64_t r = 0; r < mc; r += MR) {
      const int rows = static_cast<int>(std::min<int64_t>(MR, mc - r));
      float* dst = out + r * kc + k * MR;
      for (int i = 0; i < rows; i++) dst[i] = src[r + i];
      for (int i = rows; i < MR; i++) dst[i] = 0.0f;
    }
  }
}

// Packs op(A)[i0:i0+mc, p0:p0+kc] into panels of MR rows: panel r holds, for each k, MR values.
// A row-major A's panel is a transpose of its MR rows (through registers with the AVX-512
// kernels); a transposed A's k rows are copied (pack_a_trans).
void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t p0, int64_t kc, int MR, float* out) {
  if (trans) return pack_a_trans(A, lda, i0, mc, p0, kc, MR, out);
  for (int64_t r = 0; r < mc; r += MR) {
    const int rows = static_cast<int>(std::min<int64_t>(MR, mc - r));
    float* dst = out + r * kc;
    if (g_isa == CPU_ISA_AVX512) {
      transpose_avx512(A + (i0 + r) * lda + p0, lda, rows, kc, dst, MR);
    } else {
      for (int i = 0; i < rows; i++) {
        const float* src = A + (i0 + r + i) * lda + p0;
        for (int64_t k = 0; k < kc; k++) dst[k * MR + i] = src[k];
      }
    }
    for (int i = rows; i < MR; i++)
      for (int64_t k = 0; k < kc; k++) dst[k * MR + i] = 0.0f;
  }
}

// Packs op(B)[p0:p0+kc, j0:j0+nc] panel `q` (columns q*NR ..) into NR-wide rows.
void pack_b_panel(bool trans, const float* B, int64_t ldb, int64_t p0, int64_t kc, int64_t j0, int64_t nc, int NR,
                  int64_t q, float* out) {
  if (g_isa == CPU_ISA_AVX512 && NR == 32) return pack_b_panel_avx512(trans, B, ldb, p0, kc, j0, nc, q, out);
  const int64_t c0 = q * NR;
  const int cols = static_cast<int>(std::min<int64_t>(NR, nc - c0));
  float* dst = out + c0 * kc;
  if (!trans) {
    for (int64_t k = 0; k < kc; k++) {
      const float* src = B + (p0 + k) * ldb + j0 + c0;
      float* d = dst + k * NR;
      int j = 0;
      for (; j < cols; j++) d[j] = src[j];
      for (; j < NR; j++) d[j] = 0.0f;
    }
  } else {
    for (int j = 0; j < cols; j++) {
      const float* src = B + (j0 + c0 + j) * ldb + p0;
      for (int64_t k = 0; k < kc; k++) dst[k * NR + j] = src[k];
    }
    for (int j = cols; j < NR; j++)
      for (int64_t k = 0; k < kc; k++) dst[k * NR + j] = 0.0f;
  }
}

#if defined(__x86_64__)
// Sixteen bf16 pairs (lo[j], hi[j]) from 16 floats each, rounded to nearest even (vcvtne2ps2bf16
// writes lo's words then hi's; the permutation interleaves them).
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline __m512i bf16_pairs(__m512 lo, __m512 hi) {
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

// Sixteen consecutive floats (fewer masked in, zeros after) as eight pairs of k in the low half
// of the result, eight more in the high half: unit u = (x[2u], x[2u+1]).
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline __m512i bf16_run(const float* x, int n) {
  const __mmask16 m0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << std::max(n, 0)) - 1);
  const __mmask16 m1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1);
  // Words in memory order are already the pairs: converting x[0..31] in order is enough.
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, x + 16), _mm512_maskz_loadu_ps(m0, x));
}

// A run of kc floats (zeros when not `real`) as its (kc + 1) / 2 pairs, unit u at dst[u * stride].
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void run_to_units(const float* src, int64_t kc, bool real,
                                                                          uint32_t* dst, int64_t stride) {
  alignas(64) uint32_t units[16];
  const int64_t ku = (kc + 1) / 2;
  for (int64_t k0 = 0; k0 < kc; k0 += 32) {
    const __m512i v = bf16_run(src + k0, real ? static_cast<int>(std::min<int64_t>(32, kc - k0)) : 0);
    const int64_t u0 = k0 / 2, nu = std::min<int64_t>(16, ku - u0);
    if (stride == 1) {  // a run along a row (pack_a_amx): the units stored as they are
      _mm512_mask_storeu_epi32(dst + u0, static_cast<__mmask16>((1u << nu) - 1), v);
      continue;
    }
    _mm512_store_si512(units, v);
    for (int64_t u = 0; u < nu; u++) dst[(u0 + u) * stride] = units[u];
  }
}

// pack_a in bf16 pairs: panel r at out + r * ku (ku = pairs of k), unit (kk, i) at [kk * MR + i].
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void pack_a_bf16(bool trans, const float* A, int64_t lda,
                                                                         int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                                                                         int MR, uint32_t* out) {
  const int64_t ku = (kc + 1) / 2;
  for (int64_t r = 0; r < mc; r += MR) {
    const int rows = static_cast<int>(std::min<int64_t>(MR, mc - r));
    uint32_t* dst = out + r * ku;
    if (trans) {  // k rows of A hold the panel's rows side by side
      const __mmask16 m = static_cast<__mmask16>((1u << rows) - 1), all = static_cast<__mmask16>((1u << MR) - 1);
      for (int64_t kk = 0; kk < ku; kk++) {
        const float* s0 = A + (p0 + 2 * kk) * lda + i0 + r;
        const __m512 lo = _mm512_maskz_loadu_ps(m, s0);
        const __m512 hi = 2 * kk + 1 < kc ? _mm512_maskz_loadu_ps(m, s0 + lda) : _mm512_setzero_ps();
        _mm512_mask_storeu_epi32(dst + kk * MR, all, bf16_pairs(lo, hi));
      }
    } else {  // each row of the panel is a run of k
      for (int i = 0; i < MR; i++) run_to_units(A + (i0 + r + i) * lda + p0, kc, i < rows, dst + i, MR);
    }
  }
}

// op(A)[i0:i0+mc, p0:p0+kc] for micro_amx: row i's pairs of k at out + i * ku_pad, contiguous;
// pairs past K and rows from mc to the next multiple of 32 zero. A transposed A's k rows hold the
// rows side by side: sixteen rows' pairs are made sixteen pairs at a time, then turned through a
// 16 x 16 register transpose into runs along each row.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void pack_a_amx(bool trans, const float* A, int64_t lda,
                                                                        int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                                                                        int64_t ku_pad, uint32_t* out) {
  const int64_t ku = (kc + 1) / 2, rows_pad = (mc + 31) / 32 * 32;
  if (!trans) {
    for (int64_t i = 0; i < rows_pad; i++) {
      uint32_t* dst = out + i * ku_pad;
      run_to_units(A + (i0 + std::min(i, mc - 1)) * lda + p0, kc, i < mc, dst, 1);
      std::fill(dst + ku, dst + ku_pad, 0u);
    }
    return;
  }
  alignas(64) uint32_t block[16][16];  // [pair][row]
  for (int64_t r = 0; r < rows_pad; r += 16) {
    const int rows = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, mc - r)));
    const __mmask16 m = static_cast<__mmask16>((1u << rows) - 1);
    for (int64_t u0 = 0; u0 < ku_pad; u0 += 16) {
      for (int u = 0; u < 16; u++) {
        const int64_t kk = u0 + u;
        const float* s0 = A + (p0 + 2 * kk) * lda + i0 + r;
        const __m512 lo = kk < ku ? _mm512_maskz_loadu_ps(m, s0) : _mm512_setzero_ps();
        const __m512 hi = 2 * kk + 1 < kc ? _mm512_maskz_loadu_ps(m, s0 + lda) : _mm512_setzero_ps();
        _mm512_store_si512(block[u], bf16_pairs(lo, hi));
      }
      transpose_avx512(reinterpret_cast<const float*>(&block[0][0]), 16, 16, 16,
                       reinterpret_cast<float*>(out + r * ku_pad + u0), ku_pad);
    }
  }
}

// pack_b_panel in bf16 pairs: panel q at out + q * NR * ku_pad, unit (kk, j) at [kk * NR + j];
// pairs from ku = (kc + 1) / 2 to ku_pad are zero (AMX's tiles take pairs sixteen at a time).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void pack_b_panel_bf16(bool trans, const float* B, int64_t ldb,
                                                                               int64_t p0, int64_t kc, int64_t j0,
                                                                               int64_t nc, int NR, int64_t q,
                                                                               int64_t ku_pad, uint32_t* out) {
  const int64_t ku = (kc + 1) / 2, c0 = q * NR;
  const int cols = static_cast<int>(std::min<int64_t>(NR, nc - c0));
  uint32_t* dst = out + c0 * ku_pad;
  std::fill(dst + ku * NR, dst + ku_pad * NR, 0u);  // pairs past K
  if (!trans) {  // k rows of B hold the panel's columns side by side
    for (int64_t kk = 0; kk < ku; kk++) {
      const float* s0 = B + (p0 + 2 * kk) * ldb + j0 + c0;
      const bool odd = 2 * kk + 1 < kc;
      for (int h = 0; h < NR; h += 16) {
        const int n = std::max(0, std::min(16, cols - h));
        const __mmask16 m = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
        const __m512 lo = _mm512_maskz_loadu_ps(m, s0 + h);
        const __m512 hi = odd ? _mm512_maskz_loadu_ps(m, s0 + ldb + h) : _mm512_setzero_ps();
        _mm512_storeu_si512(dst + kk * NR + h, bf16_pairs(lo, hi));
      }
    }
  } else {  // each column of the panel is a run of k
    for (int j = 0; j < NR; j++) run_to_units(B + (j0 + c0 + j) * ldb + p0, kc, j < cols, dst + j, NR);
  }
}
#else
void pack_a_bf16(bool, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int, uint32_t*) {}
void pack_b_panel_bf16(bool, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int, int64_t, int64_t,
                       uint32_t*) {}
void pack_a_amx(bool, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, uint32_t*) {}
#endif

// A task's packed block of A: small (MC_ROWS x KC), kept by each thread.
thread_local Buffer t_pack_a;

// The products' larger scratch (packed B, a batch-1 forward's packed A and partial last panel,
// the transposed product, split-K parts) is leased from one pool shared by every thread: products
// run on JavaScript's thread (the synchronous API), on the engine thread (steps) and, before it,
// on whichever of libuv's threads was free, and scratch kept per thread was kept once for each of
// them (Para-Former-1-12's training: 47 of its 936 MB). A lease takes the smallest
// free buffer that holds it (or grows the largest, or makes one) and gives it back when it ends,
// so the pool holds about as many buffers as products run at once, and reuses them (fresh ones
// would page-fault on every product).
class ScratchPool {
 public:
  Buffer take(size_t count) {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t pick = free_.size();
    for (size_t i = 0; i < free_.size(); i++)
      if (free_[i].n >= count && (pick == free_.size() || free_[i].n < free_[pick].n)) pick = i;
    if (pick == free_.size())
      for (size_t i = 0; i < free_.size(); i++)
        if (pick == free_.size() || free_[i].n > free_[pick].n) pick = i;
    if (pick == free_.size()) return Buffer();
    Buffer b = std::move(free_[pick]);
    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(pick));
    return b;
  }
  void give(Buffer b) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(std::move(b));
  }

 private:
  std::mutex mutex_;
  std::vector<Buffer> free_;
};

ScratchPool& scratch_pool() {
  static ScratchPool* pool = new ScratchPool();  // never destroyed: a product may run at exit
  return *pool;
}

// `count` floats of scratch, 64-byte aligned, for the lease's lifetime.
class Scratch {
 public:
  explicit Scratch(size_t count) : buf_(scratch_pool().take(count)), p_(buf_.get(count)) {}
  ~Scratch() { scratch_pool().give(std::move(buf_)); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* get() const { return p_; }

 private:
  Buffer buf_;
  float* p_;
};

// Rows [0, M) of A (rows lda apart) normalised as RowNorm says into out (rows K apart), on the pool
// when `parallel`: each row as CpuBackend::layernorm_forward makes it (layernorm_rows_cpu), so the
// same bits.
void normalize_rows(const float* A, int64_t lda, int64_t M, int64_t K, const RowNorm& norm, float* out, bool parallel) {
  auto rows = [&](int64_t lo, int64_t hi) {
    constexpr int64_t CHUNK = 64;
    float mean[CHUNK], rstd[CHUNK];  // (not kept)
    for (int64_t r0 = lo; r0 < hi; r0 += CHUNK) {
      const int64_t r1 = std::min(hi, r0 + CHUNK);
      const ResidualRows resid{norm.resid, norm.resid_ld, norm.resid_rows, r0};
      layernorm_rows_cpu(A + r0 * lda, lda, nullptr, nullptr, out + r0 * K, K, mean, rstd, r1 - r0, K, norm.eps,
                         norm.resid ? &resid : nullptr);
    }
  };
  if (parallel) {
    parallel_for_range(M, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(K, 1)), rows);
  } else {
    rows(0, M);
  }
}

// Few rows (a batch-1 forward: one sequence's tokens) against a row-major op(B) (the inference
// weights are kept K-major for this, native/model/derived.h). Packing B would cost about as much
// as the product, since each of its values meets only M rows; so A is packed whole (it is small)
// and B's panels are read in place, a KC x NR block staying in L1 while every row panel passes
// it. The last, partial column panel is packed: full-width loads would read past the matrix.
void sgemm_direct_b(const KernelInfo& ker, bool transA, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                    int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, bool parallel,
                    const float* bias, const GemmBlockFn* epilogue, const PackedB* packed, const RowNorm* norm) {
  const int MR = ker.mr, NR = ker.nr;
  const int64_t n_panels = (N + NR - 1) / NR;
  // A's rows are cut into tiles of equal height up to MR (50 rows: five tiles of 10; the kernels
  // compute no padded rows). A row-major A is read in place (micro_rows) unless each thread walks
  // many column panels (it re-reads A for each, and a packed A reads faster then); otherwise each
  // tile is packed as one panel on the calling thread before the tasks start.
  const int64_t threads = parallel ? get_num_threads() : 1;
  const bool rows_in_place = !transA && ker.micro_rows && (n_panels + threads - 1) / threads <= DIRECT_B_ROWS_MAX_PANELS;
  const int64_t tiles = (M + MR - 1) / MR, m_pad = tiles * MR;
  auto tile_row = [&](int64_t t) { return M * t / tiles; };
  const std::unique_ptr<Scratch> a_lease = rows_in_place ? nullptr : std::make_unique<Scratch>(static_cast<size_t>(m_pad * K));
  float* apack = a_lease ? a_lease->get() : nullptr;  // K block at p0: apack + m_pad * p0
  if (!rows_in_place) {
    // Normalised rows (norm) packed from scratch.
    const std::unique_ptr<Scratch> normed = norm ? std::make_unique<Scratch>(static_cast<size_t>(M * K)) : nullptr;
    if (normed) normalize_rows(A, lda, M, K, *norm, normed->get(), false);
    const float* a = normed ? normed->get() : A;
    const int64_t ld = normed ? K : lda;
    for (int64_t p0 = 0; p0 < K; p0 += KC)
      for (int64_t t = 0; t < tiles; t++) {
        const int64_t kc = std::min(KC, K - p0);
        pack_a(transA, a, ld, tile_row(t), tile_row(t + 1) - tile_row(t), p0, kc, MR, apack + m_pad * p0 + t * MR * kc);
      }
  }
  // Column panel q of C, A's rows read in place from `a` (rows lda_q apart) or packed.
  auto task = [&](int64_t q, const float* a, int64_t lda_q) {
    const int64_t jj = q * NR;
    const int nr = static_cast<int>(std::min<int64_t>(NR, N - jj));
    // B's panel: packed ahead (its rows in order, the edge's zero padded), else read in place.
    const float* bq = packed ? packed->data + q * packed->panel_stride : B + jj;
    int64_t ldbq = packed ? NR : ldb;
    std::unique_ptr<Scratch> edge;
    if (nr < NR && !packed) {
      edge = std::make_unique<Scratch>(static_cast<size_t>(K * NR));
      pack_b_panel(false, B, ldb, 0, K, jj, nr, NR, 0, edge->get());
      bq = edge->get();
      ldbq = NR;
    }
    for (int64_t p0 = 0; p0 < K; p0 += KC) {
      const int64_t kc = std::min(KC, K - p0);
      const bool add = beta != 0.0f || p0 > 0;
      const float* bias_q = bias && p0 == 0 ? bias + jj : nullptr;
      for (int64_t t = 0; t < tiles; t++) {
        const int64_t r = tile_row(t);
        const int mr = static_cast<int>(tile_row(t + 1) - r);
        if (rows_in_place) {
          ker.micro_rows(kc, a + r * lda_q + p0, lda_q, bq + p0 * ldbq, ldbq, C + r * ldc + jj, ldc, mr, nr, alpha, add,
                         bias_q);
        } else {
          ker.micro(kc, apack + m_pad * p0 + t * MR * kc, MR, bq + p0 * ldbq, ldbq, C + r * ldc + jj, ldc, mr, nr, alpha,
                    add, bias_q);
        }
      }
    }
    if (epilogue) (*epilogue)(0, M, jj, jj + nr);
  };
  // Each thread a contiguous share of the panels: packed ahead, they are one stream per thread,
  // and a thread's share stays in its L2 from one call to the next (batch-1 ViT-4 3% faster,
  // Para-Former-1-12 2.6%, than panels taken in turn).
  const int64_t shares = parallel && n_panels > 1 && M * N * K > (1 << 18) ? std::min<int64_t>(threads, n_panels) : 1;
  if (rows_in_place && norm) {
    // Each share normalises every row into its thread's own buffer and reads them there (one
    // thread running both shares runs them one after the other).
    auto share = [&](int64_t s) {
      thread_local std::vector<float> own;
      float* a = line_aligned(own, M * K);
      normalize_rows(A, lda, M, K, *norm, a, false);
      for (int64_t q = n_panels * s / shares; q < n_panels * (s + 1) / shares; q++) task(q, a, K);
    };
    shares > 1 ? parallel_for(shares, share) : share(0);
  } else if (shares > 1) {
    parallel_for_shares(n_panels, [&](int64_t q) { task(q, A, lda); });
  } else {
    for (int64_t q = 0; q < n_panels; q++) task(q, A, lda);
  }
}

// One core's L2 in bytes.
int64_t l2_bytes() {
  static const int64_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long n = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (n > 0) return static_cast<int64_t>(n);
#endif
    return L2_FALLBACK_BYTES;
  }();
  return bytes;
}

void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; i++) {
    float* c = C + i * ldc;
    if (beta == 0.0f) {
      std::memset(c, 0, static_cast<size_t>(N) * 4);
    } else {
      for (int64_t j = 0; j < N; j++) c[j] *= beta;
    }
  }
}

}  // namespace

// ceil(M / MC_ROWS) blocks, one more where that is odd, the units of ROW_UNIT rows shared out
// evenly: 3200 rows, 23 blocks (22 of 144 and one of 32) -> 24 of 132 or 144; 3072 rows, 22
// blocks (21 of 144 and one of 48) -> 22 of 132 or 144. Two threads' shares of the blocks were
// 96 rows apart on the second (a third of a block left for one thread at the end).
SgemmRowBlocks sgemm_row_blocks(int64_t M) {
  const int64_t units = (M + ROW_UNIT - 1) / ROW_UNIT, blocks = (M + MC_ROWS - 1) / MC_ROWS;
  return {M, units, blocks > 1 && blocks % 2 == 1 ? std::min(units, blocks + 1) : blocks};
}

// Block b starts at unit floor(units * b / count).
int64_t SgemmRowBlocks::start(int64_t b) const { return std::min(rows, ROW_UNIT * (units * b / count)); }

// The last block starting at or before the row's unit u: the largest b with units * b < (u + 1) * count.
int64_t SgemmRowBlocks::of(int64_t row) const {
  const int64_t u = row / ROW_UNIT;
  return std::min(count - 1, ((u + 1) * count - 1) / units);
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CPU_ISA_AVX512: return "avx512";
    case CPU_ISA_AVX2: return "avx2";
    default: return "generic";
  }
}

CpuIsa cpu_isa_best() { return detect(); }
bool cpu_has_bf16() {
  static const bool has = detect_bf16();
  return has;
}
bool cpu_has_amx() {
  static const bool has = detect_amx();
  return has;
}
namespace {
// DUAT_CPU_AMX=0 keeps the bf16 products on vdpbf16ps (for benchmarks and debugging).
bool initial_amx() {
  const char* env = std::getenv("DUAT_CPU_AMX");
  return cpu_has_amx() && !(env && std::strcmp(env, "0") == 0);
}
bool g_amx = initial_amx();
}  // namespace
bool cpu_amx_active() { return g_amx; }
void amx_load_config() { load_tile_config(); }
void amx_release() { release_tiles(); }
void cpu_amx_set(bool on) {
  DUAT_CHECK(!on || cpu_has_amx(), ERROR_ARGUMENT, "this CPU (or its OS) does not let duat use AMX bf16 tiles");
  g_amx = on;
}
CpuIsa cpu_isa_active() { return g_isa; }

void cpu_isa_set(CpuIsa isa) {
  DUAT_CHECK(isa >= CPU_ISA_GENERIC && isa <= detect(), ERROR_ARGUMENT,
             std::string("this CPU does not support the ") + cpu_isa_name(isa) + " kernels");
  g_isa = isa;
}

const char* gemm_tuning_name(const GemmTuning& t) {
  auto same = [&](const GemmTuning& u) {
    return t.pack_transposed_a == u.pack_transposed_a && t.tile_rows_outer == u.tile_rows_outer &&
           t.chunk_cols == u.chunk_cols && t.grad_act_tiles == u.grad_act_tiles;
  };
  return same(GEMM_TUNING_AMD) ? "amd" : same(GEMM_TUNING_INTEL) ? "intel" : "custom";
}
GemmTuning gemm_tuning() { return g_tuning; }
void gemm_tuning_set(const GemmTuning& t) {
  DUAT_CHECK(t.chunk_cols >= 32 && t.chunk_cols % 32 == 0, ERROR_ARGUMENT,
             "a GEMM tuning's chunk_cols must be a positive multiple of 32 but received " + std::to_string(t.chunk_cols));
  g_tuning = t;
}

namespace {
// Asks for `rows` rows of a backward act's 32 columns of pre from (i, j), line by line.
void prefetch_tile(const GemmAct* act, int64_t i, int64_t j, int64_t rows) {
  for (int64_t r = 0; r < rows; r++) {
    const char* p = reinterpret_cast<const char*>(act->pre + (i + r) * act->ld + j);
    __builtin_prefetch(p, 0, 3);
    __builtin_prefetch(p + 64, 0, 3);
  }
}
}  // namespace

void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc, bool parallel, const float* bias,
           bool bf16, const GemmBlockFn* epilogue, const GemmAct* act, const PackedB* packed, const RowNorm* norm) {
  if (M <= 0 || N <= 0) return;
  DUAT_CHECK(!norm || (!transA && (!norm->resid || norm->resid_rows > 0)), ERROR_ARGUMENT,
             "sgemm: normalised rows need a row-major A (and a residual of at least one row)");
  // Every path but the few rows against a row-major B (sgemm_direct_b, which normalises them as it
  // goes) takes A's normalised rows from scratch.
  auto normalized_first = [&] {
    const Scratch rows(static_cast<size_t>(M * K));
    normalize_rows(A, lda, M, K, *norm, rows.get(), parallel);
    sgemm(false, transB, M, N, K, alpha, rows.get(), K, B, ldb, beta, C, ldc, parallel, bias, bf16, epilogue, act, packed);
  };
  // The GELU output over finished blocks, then the caller's epilogue: for every path but the
  // packed one's register tiles. (A backward act's blocks go to the caller's epilogue alone.)
  const bool act_grad = act && act->grad_sums;
  GemmBlockFn act_blocks;
  if (act && !act_grad) {
    act_blocks = [=](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
      for (int64_t i = i0; i < i1; i++) gelu_forward_range_cpu(C + i * ldc + j0, act->p + i * act->ld + j0, j1 - j0);
      if (epilogue) (*epilogue)(i0, i1, j0, j1);
    };
  }
  const GemmBlockFn* block_epilogue = act && !act_grad ? &act_blocks : epilogue;
  // After blocks whose tiles did the act: the caller's epilogue (a backward act's is the act itself).
  const GemmBlockFn* tiles_epilogue = act_grad ? nullptr : epilogue;
  if (K <= 0 || alpha == 0.0f) {
    if (beta != 1.0f) scale_c(M, N, beta, C, ldc);
    if (bias)
      for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) C[i * ldc + j] += bias[j];
    if (block_epilogue) (*block_epilogue)(0, M, 0, N);
    return;
  }
  // Small products (attention's per-head matrices, batch-1 rows): packing costs more than it
  // saves, so they run unpacked, vectorised over N. The bias case keeps the packed path.
  if (!bias && M * N * K <= SMALL_GEMM_MAX && (!transB || K * N <= 65536)) {
    if (norm) return normalized_first();
    unpacked_product(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (block_epilogue) (*block_epilogue)(0, M, 0, N);
    return;
  }
  // beta other than 0 or 1: scale once, then accumulate.
  if (beta != 0.0f && beta != 1.0f) {
    scale_c(M, N, beta, C, ldc);
    beta = 1.0f;
  }
  // A weight gradient with fewer rows than columns (A^T B over many tokens: 192 x 3072 x 3200):
  // computed as its transpose, B^T A, which reads B (the large operand) once in place as its A
  // instead of packing it, then transposed into C. 192 x 3072 x 3200: 13.3 -> 10.9 ms.
  if (transA && !transB && !bias && 2 * M <= N && K >= SWAP_MIN_K) {
    const Scratch swap(static_cast<size_t>(M * N));
    float* ct = swap.get();
    sgemm(true, false, N, M, K, alpha, B, ldb, A, lda, 0.0f, ct, M, parallel, nullptr, bf16);
    auto transpose_range = [&](int64_t lo, int64_t hi) {  // rows [lo, hi) of C^T: columns of C
      transpose(ct + lo * M, M, hi - lo, M, C + lo, ldc, beta != 0.0f);
      if (block_epilogue) (*block_epilogue)(0, M, lo, hi);
    };
    if (parallel) {
      parallel_for_range(N, 64, transpose_range);
    } else {
      transpose_range(0, N);
    }
    return;
  }
  const KernelInfo& ker = KERNELS[g_isa];
  bf16 = bf16 && ker.micro_bf16 != nullptr && cpu_has_bf16();
  const bool amx = bf16 && g_amx;  // bf16 on AMX tiles (micro_amx)
  const int MR = ker.mr, NR = ker.nr;
  const int64_t threads = parallel ? get_num_threads() : 1;
  if (packed && (bf16 || packed->width != NR)) packed = nullptr;  // panels these tiles do not read

  // A long K with a small C (a weight gradient summed over many tokens): split K over the
  // threads, each summing its share into a private C, then add the parts. One parallel region
  // instead of two per K block. A narrow C splits from a shorter K (each thread's packed B stays
  // small): 768 x 192 x 3200, A^T B, 3.5 -> 2.9 ms; 192 x 768 x 3200 stays whole (split: 4.1 -> 5.6).
  // Few rows read against a row-major B (below) split K too, when its columns are too few to
  // share out.
  const bool direct_b = (!transB || packed) && M <= DIRECT_B_MAX_M && N >= NR;
  if (threads > 1 && ((K >= 1024 && (K > 4 * (M + N) || (N <= SPLIT_K_NARROW_N && K > M + N))) ||
                      (direct_b && K >= 512 && N < 16 * NR))) {
    if (norm) return normalized_first();
    std::vector<std::unique_ptr<Scratch>> parts;
    for (int64_t t = 1; t < threads; t++) parts.push_back(std::make_unique<Scratch>(static_cast<size_t>(M * N)));
    parallel_for(threads, [&](int64_t t) {
      const int64_t k0 = K * t / threads, k1 = K * (t + 1) / threads;
      const float* a = transA ? A + k0 * lda : A + k0;
      const float* b = transB ? B + k0 : B + k0 * ldb;
      PackedB part;  // rows k0 .. k1 - 1 of every panel
      if (packed) part = {packed->data + k0 * NR, NR, packed->panel_stride};
      const PackedB* pb = packed ? &part : nullptr;
      if (t == 0) {
        sgemm(transA, transB, M, N, k1 - k0, alpha, a, lda, b, ldb, beta, C, ldc, false, bias, bf16, nullptr, nullptr, pb);
      } else {
        sgemm(transA, transB, M, N, k1 - k0, alpha, a, lda, b, ldb, 0.0f, parts[t - 1]->get(), N, false, nullptr, bf16,
              nullptr, nullptr, pb);
      }
    });
    parallel_for_range(M, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++)
        for (int64_t t = 0; t < threads - 1; t++)
          for (int64_t j = 0; j < N; j++) C[i * ldc + j] += parts[t]->get()[i * N + j];
      if (block_epilogue) (*block_epilogue)(lo, hi, 0, N);
    });
    return;
  }

  if (direct_b) {
    sgemm_direct_b(ker, transA, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, parallel, bias, block_epilogue, packed, norm);
    return;
  }
  if (norm) return normalized_first();

  // C's rows a multiple of 1 KiB apart fall on at most four groups of L1 sets, a tile's twelve
  // rows three or more to a group (a multiple of 4 KiB: all on one): its tiles are summed in a
  // buffer first. fc1's 3200 x 768 x 192 with its GELU (rows 3 KiB apart), 4-6% faster staged;
  // Para-Former's fc1 over rows padded to a multiple of 1 KiB (branch.cpp), 3-5%.
  const bool staged = ker.micro_staged && (ldc * 4) % 1024 == 0;
  const auto micro = staged ? ker.micro_staged : ker.micro;
  const auto micro_act = staged ? ker.micro_staged_act : ker.micro_act;
  // A row-major A is read in place unless its rows are a multiple of 4 KiB apart: then the
  // twelve rows a tile reads share L1 sets, and packing pays (a stride of 3072: four branches of
  // 768 side by side).
  const bool a_rows_alias = (lda * 4) % 4096 == 0;
  // A GELU product's C stored past the caches by the tiles that write the GELU (sgemm_streams_c).
  const bool streams_c = act && !act_grad && sgemm_streams_c(M, N, K, beta);
  const GemmTuning tuning = g_tuning;
  auto direct_a = [&](int64_t panels) {
    if (transA) return !tuning.pack_transposed_a;
    return ker.micro_rows != nullptr && panels <= DIRECT_A_MAX_PANELS && !a_rows_alias;
  };
  for (int64_t j0 = 0; j0 < N; j0 += tuning.chunk_cols) {
    const int64_t nc = std::min(tuning.chunk_cols, N - j0);
    const int64_t n_panels = (nc + NR - 1) / NR;
    // A chunk of K whose packed B (KS x nc) fits B_CHUNK_BYTES: packed once, shared by all tasks.
    // On one thread, where C and a K block of packed B fit in L2 together (a weight gradient's
    // half of K: 768 x 192 over 1600 tokens), a chunk is one K block: its packed B is read from L2
    // by every row block while C stays there too, where the long chunk's packed B (1.2 MB) came
    // from L3 once per row block. 768 / 576 / 192 x 192 x 3200, A^T B, split over 2 threads:
    // 3-5%, 2-5% and 3-9% faster; four branches of them side by side, one thread each, 6%, 2-5%
    // and 7-10% (bench/results/cpu-ab-dw-chunk.md). A C of 3200 rows does not fit: its chunk
    // stays long (K blocks of 3200 x 192 x 768 re-reading C from L3 were 8% slower).
    const bool c_in_l2 = threads == 1 && (M * N + KC * nc) * 4 <= l2_bytes();
    const int64_t ks_max = c_in_l2 ? KC : std::max<int64_t>(KC, B_CHUNK_BYTES / (4 * n_panels * NR) / KC * KC);
    // k units per packed row: k itself in fp32, pairs of k in bf16 (KC is even), on AMX a
    // multiple of sixteen pairs (its tiles' depth; KC's 128 pairs are).
    auto units = [&](int64_t kc) { return amx ? (kc + 31) / 32 * 16 : bf16 ? (kc + 1) / 2 : kc; };
    for (int64_t s0 = 0; s0 < K; s0 += ks_max) {
      const int64_t ks = std::min(ks_max, K - s0);
      const int64_t k_blocks = (ks + KC - 1) / KC;
      // Block pb of the chunk holds n_panels panels of units(kc(pb)) x NR, panel after panel.
      const int64_t last_kc = ks - (k_blocks - 1) * KC;
      const std::unique_ptr<Scratch> b_lease =
          packed ? nullptr
                 : std::make_unique<Scratch>(static_cast<size_t>(n_panels * NR * ((k_blocks - 1) * units(KC) + units(last_kc))));
      float* bpack = b_lease ? b_lease->get() : nullptr;
      auto pack_b_task = [&](int64_t t) {
        const int64_t pb = t / n_panels, q = t % n_panels;
        const int64_t p0 = s0 + pb * KC, kc = std::min(KC, K - p0);
        float* block = bpack + pb * units(KC) * n_panels * NR;
        if (bf16) {
          pack_b_panel_bf16(transB, B, ldb, p0, kc, j0, nc, NR, q, units(kc), reinterpret_cast<uint32_t*>(block));
        } else {
          pack_b_panel(transB, B, ldb, p0, kc, j0, nc, NR, q, block);
        }
      };
      if (packed) {
        // Packed ahead: the blocks' panels are read where they are.
      } else if (threads > 1 && ks * nc > 32768) {
        parallel_for(k_blocks * n_panels, pack_b_task);
      } else {
        for (int64_t t = 0; t < k_blocks * n_panels; t++) pack_b_task(t);
      }
      // Tasks: row blocks of A (split over columns when there are few), each walking every K
      // block of the chunk while its rows of C stay in cache.
      const SgemmRowBlocks row_blocks = sgemm_row_blocks(M);
      const int64_t m_blocks = row_blocks.count;
      int64_t n_split = 1;
      while (m_blocks * n_split < 2 * threads && n_panels / (n_split * 2) >= 2) n_split *= 2;
      const int64_t panels_per = (n_panels + n_split - 1) / n_split;
      auto task = [&](int64_t t) {
        const int64_t ib = t / n_split, js = t % n_split;
        const int64_t i0 = row_blocks.start(ib), mc = row_blocks.start(ib + 1) - i0;
        const int64_t q0 = js * panels_per, q1 = std::min(n_panels, q0 + panels_per);
        if (q0 >= q1) return;
        // Full row panels read A in place where that pays (a transposed A's panel is a packed
        // one with a longer stride, unless the tuning packs it; a row-major A's rows are read
        // again for every column panel, so it is packed when a task has many); the rest are packed.
        const int64_t in_place = !bf16 && direct_a(q1 - q0) ? mc / MR * MR : 0;
        // The GELU from the tiles' registers on the last K block, where every tile runs `micro`
        // or micro_bf16 (not micro_rows); otherwise over the task's finished block.
        // A backward act from the tiles where a task's block of C would not stay in L2 for the
        // pass over it (Para-Former's fc2 backward, 4 or 12 branches side by side: 144 x 3328 and
        // 144 x 4096), or where the tuning says so; on AMD a block of 144 x 768 (ViT's) stays,
        // and its pass was faster (ViT-4 1.4%).
        const bool grad_tiles =
            act_grad && !bf16 && beta == 0.0f && !bias && (tuning.grad_act_tiles || mc * nc * 4 > l2_bytes());
        const bool fp32_tiles = micro_act && (in_place == 0 || transA);  // every tile runs `micro`
        const bool act_tiles = act && (act_grad ? grad_tiles && fp32_tiles : bf16 ? ker.micro_bf16_act != nullptr : fp32_tiles);
        const bool stream_c = act_tiles && streams_c;
        // A tile's rows: MR, or 32 on AMX (two tiles of 16).
        const int64_t TR = amx ? 32 : MR;
        if (amx) load_tile_config();
        for (int64_t pb = 0; pb < k_blocks; pb++) {
          const int64_t p0 = s0 + pb * KC, kc = std::min(KC, K - p0), ku = units(kc);
          const bool add = beta != 0.0f || p0 > 0, last = p0 + kc == K;
          float* apack = t_pack_a.get(static_cast<size_t>((mc - in_place + TR - 1) / TR * TR * ku));
          const uint32_t* apack_u = reinterpret_cast<const uint32_t*>(apack);
          if (amx) {
            pack_a_amx(transA, A, lda, i0, mc, p0, kc, ku, reinterpret_cast<uint32_t*>(apack));
          } else if (bf16) {
            pack_a_bf16(transA, A, lda, i0, mc, p0, kc, MR, reinterpret_cast<uint32_t*>(apack));
          } else if (in_place < mc) {
            pack_a(transA, A, lda, i0 + in_place, mc - in_place, p0, kc, MR, apack);
          }
          const float* bblock = packed ? nullptr : bpack + pb * units(KC) * n_panels * NR;  // (no offsets on null)
          const int64_t row_tiles = (mc + TR - 1) / TR, tiles = row_tiles * (q1 - q0);
          auto tile_at = [&](int64_t n) {  // (column panel, first row) of the task's n-th tile
            return tuning.tile_rows_outer ? std::pair<int64_t, int64_t>{q0 + n % (q1 - q0), n / (q1 - q0) * TR}
                                          : std::pair<int64_t, int64_t>{q0 + n / row_tiles, n % row_tiles * TR};
          };
          for (int64_t tile = 0; tile < tiles; tile++) {
            const auto [q, r] = tile_at(tile);
            const int64_t jj = q * NR;
            const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jj));
            const float* bp = packed ? packed->data + (j0 + jj) / NR * packed->panel_stride + p0 * NR : bblock + jj * ku;
            const int mr = static_cast<int>(std::min<int64_t>(TR, mc - r));
            float* c = C + (i0 + r) * ldc + j0 + jj;
            const float* bias_q = bias && p0 == 0 ? bias + j0 + jj : nullptr;
            if (amx) {
              const bool tile_gelu = act_tiles && last;
              const TileAct tile_act{{tile_gelu ? act->p + (i0 + r) * act->ld + j0 + jj : nullptr, act ? act->ld : 0}, stream_c};
              micro_amx(ku, apack_u + r * ku, ku, reinterpret_cast<const uint32_t*>(bp), c, ldc, mr, nr, alpha, add,
                        bias_q, tile_gelu ? &tile_act : nullptr);
            } else if (bf16 && act_tiles && last) {
              const TileAct tile_act{{act->p + (i0 + r) * act->ld + j0 + jj, act->ld}, stream_c};
              ker.micro_bf16_act(ku, apack + r * ku, MR, bp, NR, c, ldc, mr, nr, alpha, add, bias_q, tile_act);
            } else if (bf16) {
              ker.micro_bf16(ku, apack + r * ku, MR, bp, NR, c, ldc, mr, nr, alpha, add, bias_q);
            } else if (act_tiles && last) {
              double* sums = act_grad ? act->grad_sums + ib * N + j0 + jj : nullptr;
              const int64_t at = (i0 + r) * act->ld + j0 + jj;  // the tile's first element of p or pre
              float* out = act_grad ? nullptr : act->p + at;
              const float* pre = act_grad ? act->pre + at : nullptr;
              const TileAct tile_act{{out, act->ld, sums, pre}, stream_c, r == 0};
              // A backward act reads the pre-activation from memory: the next tile's rows are
              // asked for while this one is computed.
              if (act_grad && tile + 1 < tiles) {
                const auto [next_q, next_r] = tile_at(tile + 1);
                prefetch_tile(act, i0 + next_r, j0 + next_q * NR, std::min<int64_t>(MR, mc - next_r));
              }
              const float* a = r >= in_place ? apack + (r - in_place) * kc : A + p0 * lda + i0 + r;
              micro_act(kc, a, r >= in_place ? MR : lda, bp, NR, c, ldc, mr, nr, alpha, add, bias_q, tile_act);
            } else if (r >= in_place) {
              micro(kc, apack + (r - in_place) * kc, MR, bp, NR, c, ldc, mr, nr, alpha, add, bias_q);
            } else if (transA) {
              micro(kc, A + p0 * lda + i0 + r, lda, bp, NR, c, ldc, mr, nr, alpha, add, bias_q);
            } else {
              ker.micro_rows(kc, A + (i0 + r) * lda + p0, lda, bp, NR, c, ldc, mr, nr, alpha, add, bias_q);
            }
          }
        }
        if (amx) release_tiles();
        if (stream_c) store_fence();
        const GemmBlockFn* task_epilogue = act_tiles ? tiles_epilogue : block_epilogue;
        if (task_epilogue && s0 + ks == K) (*task_epilogue)(i0, i0 + mc, j0 + q0 * NR, j0 + std::min(nc, q1 * NR));
      };
      // Row blocks taken in turn by the threads (parallel_for) were 1-10% slower on 3200-row
      // products (bench/results/cpu-ab-scheduling.md): a thread's next rows were not the ones its
      // prefetchers had run ahead into.
      if (threads > 1 && m_blocks * n_split > 1 && M * nc * ks > (1 << 18)) {
        parallel_for_shares(m_blocks * n_split, task);
      } else {
        for (int64_t t = 0; t < m_blocks * n_split; t++) task(t);
      }
    }
  }
}

int sgemm_panel_width() { return KERNELS[g_isa].nr; }

void sgemm_pack_b(int64_t K, int64_t N, const float* B, int64_t ldb, float* out) {
  const int NR = sgemm_panel_width();
  const int64_t panels = (N + NR - 1) / NR;
  parallel_for_range(panels, 4, [&](int64_t lo, int64_t hi) {
    for (int64_t q = lo; q < hi; q++) pack_b_panel(false, B, ldb, 0, K, 0, N, NR, q, out);
  });
}

double sgemm_micro_gflops(double seconds) {
  const KernelInfo& ker = KERNELS[g_isa];
  Buffer a, b, c;
  float* pa = a.get(static_cast<size_t>(ker.mr * KC));
  float* pb = b.get(static_cast<size_t>(ker.nr * KC));
  float* pc = c.get(static_cast<size_t>(ker.mr * ker.nr));
  std::fill(pa, pa + ker.mr * KC, 1e-3f);
  std::fill(pb, pb + ker.nr * KC, 1e-3f);
  std::fill(pc, pc + ker.mr * ker.nr, 0.0f);
  int64_t calls = 64;
  const double best = best_run_seconds(
      [&](int64_t n) {
        for (int64_t i = 0; i < n; i++) ker.micro(KC, pa, ker.mr, pb, ker.nr, pc, ker.nr, ker.mr, ker.nr, 1.0f, true, nullptr);
      },
      seconds, &calls);
  return 2.0 * static_cast<double>(ker.mr * ker.nr) * KC * static_cast<double>(calls) / best / 1e9;
}

bool sgemm_streams_c(int64_t M, int64_t N, int64_t K, float beta) {
  return g_isa == CPU_ISA_AVX512 && beta == 0.0f && K <= KC && M * N * 4 >= STREAM_C_MIN_BYTES;
}

void sgemm_small(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (g_isa == CPU_ISA_AVX512 && K > 0) {
    unpacked_product(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  } else {
    sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, false);
  }
}

void sgemm_small_then(SmallThen then, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                      const SmallThenArgs& args) {
  if (M <= 0 || N <= 0) return;
#if defined(__x86_64__)
  if (g_isa == CPU_ISA_AVX512 && K > 0)
    return small_then_avx512(then, transA, transB, M, N, K, alpha, A, lda, B, ldb, C, ldc, args);
#endif
  // Elsewhere: the product, then the step over it.
  sgemm_small(transA, transB, M, N, K, alpha, A, lda, B, ldb, 0.0f, C, ldc);
  for (int64_t i = 0; i < M; i++) {
    float* c = C + i * ldc;
    for (int64_t j = 0; j < N; j++) {
      switch (then) {
        case SmallThen::col_max: args.max[j] = c[j] > args.max[j] ? c[j] : args.max[j]; break;
        case SmallThen::exp_shift: c[j] = fast_exp(c[j] - args.col[j]); break;
        case SmallThen::row_scale: c[j] *= args.row[i]; break;
      }
    }
  }
}

}  // namespace duat
