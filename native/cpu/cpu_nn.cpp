// cpu_nn.cpp: the CPU backend's matrix products (GemmArgs on sgemm), attention, patches, the
// LayerNorm-affine folds and the optimizer updates. Contracts: core/backend.h.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/errors.h"
#include "../core/parallel.h"
#include "cpu_backend.h"
#include "gemm.h"
#include "kernels.h"
#include "math.h"

namespace duat {

namespace {
constexpr int64_t ELEM_GRAIN = 1 << 15;
constexpr int64_t FOLD_MIN_ROWS = 64;  // rows of a fold's backward below which a branch is not cut up

// One operand of GemmArgs as sgemm reads it: X(r, k) = p[r*s_r + k*s_k] for `rows` x K. sgemm
// reads a matrix row-major or transposed with one leading dimension; any other strides are
// first copied into `scratch` (row-major).
struct SgemmOperand {
  const float* p;
  bool trans;  // sgemm's transA for A; for B, whether B(n, k) is read as row n (transB)
  int64_t ld;
};

// A(m, k): sgemm's op(A)[m, k] = trans ? A[k*ld + m] : A[m*ld + k].
SgemmOperand operand_a(const float* p, int64_t s_m, int64_t s_k, int64_t M, int64_t K, std::vector<float>* scratch) {
  if ((s_k == 1 || K == 1) && (M == 1 || s_m >= K)) return {p, false, M == 1 ? std::max<int64_t>(K, 1) : s_m};
  if ((s_m == 1 || M == 1) && (K == 1 || s_k >= M)) return {p, true, K == 1 ? std::max<int64_t>(M, 1) : s_k};
  scratch->resize(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) (*scratch)[m * K + k] = p[m * s_m + k * s_k];
  return {scratch->data(), false, std::max<int64_t>(K, 1)};
}

// B(n, k): sgemm's op(B)[k, n] = trans ? B[n*ld + k] : B[k*ld + n].
SgemmOperand operand_b(const float* p, int64_t s_n, int64_t s_k, int64_t N, int64_t K, std::vector<float>* scratch) {
  if ((s_k == 1 || K == 1) && (N == 1 || s_n >= K)) return {p, true, N == 1 ? std::max<int64_t>(K, 1) : s_n};
  if ((s_n == 1 || N == 1) && (K == 1 || s_k >= N)) return {p, false, K == 1 ? std::max<int64_t>(N, 1) : s_k};
  scratch->resize(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; n++)
    for (int64_t k = 0; k < K; k++) (*scratch)[n * K + k] = p[n * s_n + k * s_k];
  return {scratch->data(), true, std::max<int64_t>(K, 1)};
}

// One batch item of a GemmArgs product; `par` lets sgemm and the epilogue use the pool; `bf16`
// rounds the operands to bf16 (sgemm). `after` and `act`: sgemm's epilogue and act for a product
// without an epilogue of its own.
void gemm_one(const GemmArgs& g, int64_t z, bool par, bool bf16, const GemmBlockFn* after = nullptr,
              const GemmAct* act = nullptr) {
  thread_local std::vector<float> sa, sb, tmp;
  const SgemmOperand a = operand_a(g.A + z * g.a_batch, g.a_m, g.a_k, g.M, g.K, &sa);
  const SgemmOperand b = operand_b(g.B + z * g.b_batch, g.b_n, g.b_k, g.N, g.K, &sb);
  float* C = g.C + z * g.c_batch;
  const float* bias = g.bias ? g.bias + z * g.bias_batch : nullptr;
  const PackedB packed{g.b_packed ? g.b_packed + z * g.b_packed_batch : nullptr, g.b_packed_width, g.b_packed_stride};
  const PackedB* pb = g.b_packed ? &packed : nullptr;
  const RowNorm row_norm{g.norm_eps, g.norm_resid, g.norm_resid_m, g.norm_resid_rows};
  DUAT_CHECK(!g.norm_a || !a.trans, ERROR_ARGUMENT, "gemm: normalised rows need A's rows contiguous");
  const RowNorm* norm = g.norm_a ? &row_norm : nullptr;
  if (g.epilogue == EPILOGUE_NONE) {
    sgemm(a.trans, b.trans, g.M, g.N, g.K, g.alpha, a.p, a.ld, b.p, b.ld, g.beta, C, g.c_m, par, bias, bf16, after, act, pb,
          norm);
    return;
  }
  // GELU with its pre-activation kept (training): the product into aux, its GELU into C from the
  // kernels' registers (sgemm's act).
  if (g.epilogue == EPILOGUE_GELU && g.aux && g.beta == 0.0f) {
    const GemmAct act{C, g.c_m};
    sgemm(a.trans, b.trans, g.M, g.N, g.K, g.alpha, a.p, a.ld, b.p, b.ld, 0.0f, g.aux + z * g.c_batch, g.c_m, par, bias,
          bf16, nullptr, &act, pb, norm);
    return;
  }
  // Fused epilogues: the product into `dest` (the pre-activation buffer, C itself, or scratch
  // when C's old values still count), each finished block then mapped into C.
  float* dest = C;
  int64_t ld = g.c_m;
  if (g.epilogue == EPILOGUE_GELU && g.aux) {
    dest = g.aux + z * g.c_batch;
  } else if (g.beta != 0.0f) {
    tmp.resize(static_cast<size_t>(g.M) * g.N);
    dest = tmp.data();
    ld = g.N;
  }
  // Applied to each finished block of the product inside sgemm, on its thread, while in cache.
  const GemmBlockFn block = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t m = i0; m < i1; m++) {
      const float* v = dest + m * ld + j0;
      float* c = C + m * g.c_m + j0;
      if (g.epilogue == EPILOGUE_GELU) {
        gelu_forward_range_cpu(v, c, j1 - j0, g.beta);
      } else {
        stage_combine_range_cpu(c, v, g.resid + m * g.c_m + j0, g.extra + m * g.c_m + j0, g.nsum, g.extra_batch,
                                g.scale, g.beta, j1 - j0);
      }
    }
  };
  sgemm(a.trans, b.trans, g.M, g.N, g.K, g.alpha, a.p, a.ld, b.p, b.ld, 0.0f, dest, ld, par, bias, bf16, &block, nullptr,
        pb, norm);
}
}  // namespace

void CpuBackend::gemm(const GemmArgs& g) {
  if (g.M <= 0 || g.N <= 0 || g.batch <= 0) return;
  // The precision is the calling thread's (the model's, set around its forward and step); 'tf32'
  // computes in fp32 here.
  const bool bf16 = matmul_precision() == PRECISION_BF16;
  if (g.batch == 1) {
    gemm_one(g, 0, true, bf16);
  } else {
    parallel_for(g.batch, [&](int64_t z) { gemm_one(g, z, false, bf16); });
  }
}

int CpuBackend::packed_b_width() const { return sgemm_panel_width(); }

void CpuBackend::pack_b(const float* B, int64_t K, int64_t N, int64_t ldb, float* out) { sgemm_pack_b(K, N, B, ldb, out); }

// The GELU's gradient from the product's register tiles (sgemm's backward act: C is written once,
// the pre-activation read as each tile finishes, asked for a tile ahead), or over each finished
// block of the product on sgemm's other paths, while the block is in cache. The bias gradient's
// column sums are kept in fp64 per block of sgemm_row_blocks, rows in order (a block that is
// not one of them, on a path that hands out others, has its sums taken afterwards from C, the
// same sums), then summed over the blocks in order: the same bits whatever the number of threads
// and whichever way. pre is laid out like C (rows g.c_m apart).
void CpuBackend::gemm_gelu_backward(const GemmArgs& g, const float* pre, float* db) {
  if (g.batch != 1 || g.beta != 0.0f || g.bias || g.epilogue != EPILOGUE_NONE || g.c_m < g.N || g.M <= 0 || g.N <= 0)
    return Backend::gemm_gelu_backward(g, pre, db);
  const int64_t M = g.M, N = g.N, ld = g.c_m;
  const SgemmRowBlocks rows = sgemm_row_blocks(M);
  const int64_t blocks = rows.count;
  thread_local std::vector<double> part_buf;
  part_buf.resize(static_cast<size_t>(blocks * N));
  double* part = part_buf.data();
  float* C = g.C;
  std::atomic<bool> sums_whole{true};
  const GemmBlockFn block = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const int64_t off = i0 * ld + j0;
    const int64_t b = rows.of(i0);  // within one block of the sums:
    const bool whole = rows.start(b) == i0 && i1 <= rows.start(b + 1);
    double* sums = whole ? part + b * N + j0 : nullptr;
    if (sums) std::fill(sums, sums + (j1 - j0), 0.0);
    if (!whole) sums_whole.store(false, std::memory_order_relaxed);  // its sums are taken from C afterwards
    gelu_backward_rows_cpu(pre + off, C + off, C + off, ld, i1 - i0, j1 - j0, sums);
  };
  const GemmAct act{nullptr, ld, part, pre};
  gemm_one(g, 0, true, matmul_precision() == PRECISION_BF16, &block, &act);
  if (!sums_whole.load()) {
    parallel_for(blocks, [&](int64_t b) {
      double* sums = part + b * N;
      std::fill(sums, sums + N, 0.0);
      accumulate_rows_f64_cpu(C + rows.start(b) * ld, ld, rows.start(b + 1) - rows.start(b), sums, N);
    });
  }
  sum_parts_f64_cpu(part, blocks, N, db, false);
}

// ================================ attention =====================================================
// Heads run on the pool (for_each_head). The T x T probabilities live in per-thread scratch only:
// forward keeps the log-sum-exp of each query and backward rebuilds the probabilities from it
// (one more score product, no saved T x T). The scratch holds them transposed, keys x queries
// (S^T = K Q^T), so each query's softmax runs down a column with sixteen queries per vector
// (kernels.h, softmax_lse_cols_cpu); its rows are padded to a multiple of 16 (the padding holds
// whatever the scratch held: computed on, never read back). The per-head products are small
// (T x T x D and T x D x T) and run unpacked (sgemm_small): Q, K, V, dO and the outputs are read
// and written in place (ld = N*3C). The steps around them are done as their register tiles are
// stored (sgemm_small_then): the scores' column maxima, the division of each output row by its
// query's sum (not a pass over P), the probabilities' exp in backward. Their speed:
// bench/results/cpu-ops.md, step kernel rows.
namespace {
// Asks for image b's rows of qkv (T rows of N*3C floats, one contiguous block) to be brought into
// L2, line by line. Its heads read them as 3T short runs a row apart, which the hardware
// prefetchers do not follow; with the AVX-512 column softmax, attention at batch 64 went from
// 36-40% to 40-42% of peak (bench/results/cpu-ops-ab.md); prefetching each next head, the next
// image, or dout and dqkv too were measured no better.
void prefetch_image(const dm::AttnLayout& L, const float* qkv, int64_t b) {
  const char* p = reinterpret_cast<const char*>(qkv + b * L.T * L.ld_in());
  const int64_t bytes = L.T * L.ld_in() * static_cast<int64_t>(sizeof(float));
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 2);
}

// fn(task, b, n, h) for every head. With enough images for the pool, a task is one image's
// heads in order (they read the same T rows of qkv, which then stream through one core's caches
// instead of being shared between the threads); otherwise a task is one head.
template <typename Fn>
void for_each_head(const dm::AttnLayout& L, int64_t B, const float* qkv, Fn fn) {
  const int64_t heads = L.N * L.H;
  const int64_t per_task = B >= 4 * get_num_threads() ? heads : 1;
  parallel_for(B * heads / per_task, [&](int64_t task) {
    if (per_task == heads) prefetch_image(L, qkv, task);
    for (int64_t t = task * per_task; t < (task + 1) * per_task; t++) fn(t, t / heads, (t / L.H) % L.N, t % L.H);
  });
}

// Row stride of the keys x queries scratch for `queries` queries.
int64_t padded_queries(int64_t queries) { return (queries + 15) / 16 * 16; }

// A head's keys x queries block in the thread's scratch v, starting on a 64-byte line: its rows
// whole vectors on every thread (where a vector's allocation happens to fall moved attention by 8%).
float* keys_by_queries(std::vector<float>& v, const dm::AttnLayout& L, int64_t queries) {
  return line_aligned(v, L.T * padded_queries(queries));
}

// The forward of the first `queries` queries of every head against all T keys: out (B, queries,
// N*C), lse (B, N, H, T) when non-null (every query).
void attention_forward_queries(const dm::AttnLayout& L, int64_t B, int64_t queries, const float* qkv, float* out,
                               float* lse) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(L.D));
  const int64_t T = L.T, ld = L.ld_in(), tp = padded_queries(queries);
  for_each_head(L, B, qkv, [&](int64_t, int64_t b, int64_t n, int64_t h) {
    thread_local std::vector<float> scratch, max, inv_sum;  // P^T; each query's largest score, 1 / sum
    float* P = keys_by_queries(scratch, L, queries);
    max.assign(static_cast<size_t>(queries), -INFINITY);
    inv_sum.resize(static_cast<size_t>(queries));
    // S^T = scale * K Q^T, each query's maximum found as its column's tiles finish
    sgemm_small_then(SmallThen::col_max, false, true, T, queries, L.D, scale, qkv + L.k_offset(b, n, h), ld,
                     qkv + L.q_offset(b, n, h), ld, P, tp, {max.data()});
    softmax_lse_cols_cpu(P, tp, T, queries, lse ? lse + L.stat_offset(b, n, h) : nullptr, max.data(), inv_sum.data());
    // O = P V = (P^T)^T V, each query's row divided by its sum of exponentials as it is stored
    SmallThenArgs normalise;
    normalise.row = inv_sum.data();
    float* o = out + b * queries * L.ld_out() + n * L.C + h * L.D;  // L.out_offset with `queries` rows an image
    sgemm_small_then(SmallThen::row_scale, true, false, queries, L.D, T, 1.0f, P, tp, qkv + L.v_offset(b, n, h), ld, o,
                     L.ld_out(), normalise);
  });
}
}  // namespace

void CpuBackend::attention_forward(const dm::AttnLayout& L, int64_t B, const float* qkv, float* out, float* lse) {
  attention_forward_queries(L, B, L.T, qkv, out, lse);
}

void CpuBackend::attention_forward_first(const dm::AttnLayout& L, int64_t B, int64_t queries, const float* qkv,
                                         float* out) {
  attention_forward_queries(L, B, queries, qkv, out, nullptr);
}

// Backward: P^T rebuilt from the scores and the log-sum-exp as the score product finishes each
// vector. With `parts` (B x N*3C), each head's dq, dk and dv, still in cache, summed down their T
// rows in fp64 into its image's row of parts (every element of which one head writes).
namespace {
void attention_backward_heads(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv,
                              const float* lse, float* dqkv, double* parts) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(L.D));
  const int64_t T = L.T, D = L.D, ld = L.ld_in(), ldo = L.ld_out(), tp = padded_queries(L.T);
  for_each_head(L, B, qkv, [&](int64_t, int64_t b, int64_t n, int64_t h) {
    thread_local std::vector<float> p_scratch, ds_scratch;
    float* P = keys_by_queries(p_scratch, L, T);     // P^T, keys x queries
    float* dS = keys_by_queries(ds_scratch, L, T);  // dP^T, then dS^T
    const float* q = qkv + L.q_offset(b, n, h);
    const float* k = qkv + L.k_offset(b, n, h);
    const float* v = qkv + L.v_offset(b, n, h);
    const float* dO = dout + L.out_offset(b, n, h);
    float* dq = dqkv + L.q_offset(b, n, h);
    float* dk = dqkv + L.k_offset(b, n, h);
    float* dv = dqkv + L.v_offset(b, n, h);
    SmallThenArgs rebuild;
    rebuild.col = lse + L.stat_offset(b, n, h);
    sgemm_small_then(SmallThen::exp_shift, false, true, T, T, D, scale, k, ld, q, ld, P, tp, rebuild);  // P^T
    sgemm_small(false, false, T, D, T, 1.0f, P, tp, dO, ldo, 0.0f, dv, ld);    // dV = P^T dO
    sgemm_small(false, true, T, T, D, 1.0f, v, ld, dO, ldo, 0.0f, dS, tp);     // dP^T = V dO^T
    softmax_backward_cols_cpu(P, dS, tp, T, T);                               // dS^T
    sgemm_small(true, false, T, D, T, scale, dS, tp, k, ld, 0.0f, dq, ld);    // dQ = s dS K
    sgemm_small(false, false, T, D, T, scale, dS, tp, q, ld, 0.0f, dk, ld);   // dK = s dS^T Q
    if (!parts) return;
    for (const float* g : {dq, dk, dv}) {
      double* sums = parts + b * ld + (g - dqkv - b * T * ld);  // the columns of g's block
      std::fill(sums, sums + D, 0.0);
      accumulate_rows_f64_cpu(g, ld, T, sums, D);
    }
  });
}
}  // namespace

void CpuBackend::attention_backward(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv,
                                    const float*, const float* lse, float*, float* dqkv) {
  attention_backward_heads(L, B, dout, qkv, lse, dqkv, nullptr);
}

// The bias sums from each image's part, added over the images in order: the same bits whatever
// the number of threads (the reduction over dqkv they replace read 7-30 MB back from memory).
void CpuBackend::attention_backward_bias(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv,
                                         const float*, const float* lse, float*, float* dqkv, float* db) {
  thread_local std::vector<double> scratch;
  scratch.resize(static_cast<size_t>(B * L.ld_in()));
  attention_backward_heads(L, B, dout, qkv, lse, dqkv, scratch.data());
  sum_parts_f64_cpu(scratch.data(), B, L.ld_in(), db, false);
}

void CpuBackend::attention_probs(const dm::AttnLayout& L, int64_t B, const float* qkv, float* probs) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(L.D));
  const int64_t T = L.T, ld = L.ld_in();
  for_each_head(L, B, qkv, [&](int64_t task, int64_t b, int64_t n, int64_t h) {
    float* p = probs + task * T * T;
    sgemm(false, true, T, T, L.D, scale, qkv + L.q_offset(b, n, h), ld, qkv + L.k_offset(b, n, h), ld, 0.0f, p, T,
          false);
    for (int64_t i = 0; i < T; i++) softmax_lse_row_cpu(p + i * T, p + i * T, T);
  });
}

// ================================ patches ======================================================
// Each (image, patch row) copies its P-long pixel runs; the same index map serves backward.
namespace {
template <typename Fn>
void patch_runs(int64_t B, int64_t ch, int64_t S, int64_t P, Fn fn) {
  const int64_t G = S / P, T = G * G, F = ch * P * P;
  parallel_for(B * G, [&](int64_t task) {
    const int64_t b = task / G, gy = task % G;
    for (int64_t gx = 0; gx < G; gx++)
      for (int64_t c = 0; c < ch; c++)
        for (int64_t py = 0; py < P; py++)
          fn(((b * ch + c) * S + gy * P + py) * S + gx * P, (b * T + gy * G + gx) * F + (c * P + py) * P);
  });
}
}  // namespace

void CpuBackend::patchify_forward(const float* images, float* patches, int64_t B, int64_t ch, int64_t S, int64_t P) {
  patch_runs(B, ch, S, P, [&](int64_t src, int64_t dst) {
    for (int64_t i = 0; i < P; i++) patches[dst + i] = images[src + i];
  });
}

void CpuBackend::patchify_backward(const float* dpatches, float* dimages, int64_t B, int64_t ch, int64_t S, int64_t P) {
  patch_runs(B, ch, S, P, [&](int64_t src, int64_t dst) {
    for (int64_t i = 0; i < P; i++) dimages[src + i] += dpatches[dst + i];
  });
}

// ================================ LayerNorm-affine folds =======================================
void CpuBackend::fold_affine_forward(const float* w, const float* b, const float* g, const float* beta, float* wf,
                                     float* bf, int64_t N, int64_t O, int64_t C) {
  parallel_for_range(N * O, std::max<int64_t>(1, ELEM_GRAIN / std::max<int64_t>(C, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t row = lo; row < hi; row++) {
      const int64_t n = row / O;
      const float dot = fold_affine_row_cpu(w + row * C, g + n * C, beta + n * C, wf + row * C, C);
      bf[row] = dot + (b ? b[row] : 0.0f);
    }
  });
}

void CpuBackend::fold_affine_backward(const float* w, const float* g, const float* beta, const float* dwf,
                                      const float* dbf, float* dw, float* db, float* dg, float* dbeta, int64_t N,
                                      int64_t O, int64_t C) {
  // A task per branch and quarter of its rows, the rows streamed whole, in order, into the
  // quarter's own dg and dbeta, which are then added in order: the same bits whatever the number
  // of threads, and a ViT block's fold (one branch) shared by the threads too. Cutting a branch's
  // columns into pieces instead made each thread read strips of every row, 2 to 6 times slower
  // than one thread reading the rows whole (768 x 192: 0.19 -> 0.03 ms in a C++ harness).
  const int64_t parts = O >= 4 * FOLD_MIN_ROWS ? 4 : 1;
  // A task's sums on 64-byte lines of their own: the threads add into them row after row (sharing
  // a line at the edges made the fold slower on two threads than on one).
  const int64_t stride = (2 * C + 15) / 16 * 16;
  thread_local std::vector<float> scratch;
  float* sums = line_aligned(scratch, N * parts * stride);
  parallel_for(N * parts, [&](int64_t task) {  // sums: [n][part][dg | dbeta]
    const int64_t n = task / parts, part = task % parts;
    float* dgn = sums + task * stride;
    float* dbn = dgn + C;
    std::fill(dgn, dgn + 2 * C, 0.0f);
    for (int64_t o = O * part / parts; o < O * (part + 1) / parts; o++) {
      const int64_t row = n * O + o;
      fold_affine_backward_row_cpu(dwf + row * C, w + row * C, g + n * C, beta + n * C, dbf[row], dw + row * C, dgn, dbn,
                                   C);
      if (db) db[row] = dbf[row];
    }
  });
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++) {
      const float* part0 = sums + n * parts * stride;
      float sg = part0[c], sb = part0[C + c];
      for (int64_t part = 1; part < parts; part++) {
        sg += part0[part * stride + c];
        sb += part0[part * stride + C + c];
      }
      dg[n * C + c] = sg;
      dbeta[n * C + c] = sb;
    }
}

// ================================ optimizers ===================================================
// One parallel region per update over every parameter: the tensors are cut into pieces of at
// most OPT_PIECE elements (a small tensor is one piece), claimed by the pool's threads.
namespace {
constexpr int64_t OPT_PIECE = 1 << 14;

struct Piece {
  size_t tensor;
  int64_t lo, hi;
};

template <typename T, typename Count>
std::vector<Piece> pieces_of(const std::vector<T>& ts, Count count) {
  std::vector<Piece> out;
  for (size_t t = 0; t < ts.size(); t++)
    for (int64_t lo = 0, n = count(ts[t]); lo < n; lo += OPT_PIECE) out.push_back({t, lo, std::min(n, lo + OPT_PIECE)});
  return out;
}
}  // namespace

void CpuBackend::adamw(const std::vector<AdamWTensor>& ts, const GradScale& s) {
  if (dm::update_skipped(s.sumsq, s.skip_non_finite)) return;
  const float gs = dm::grad_factor(s.sumsq, s.max_norm);
  const std::vector<Piece> pieces = pieces_of(ts, [](const AdamWTensor& t) { return t.n; });
  parallel_for(static_cast<int64_t>(pieces.size()), [&](int64_t i) {
    const Piece& pc = pieces[static_cast<size_t>(i)];
    const AdamWTensor& t = ts[pc.tensor];
    const AdamWConsts c{t.beta1, t.one_minus_beta1, t.beta2, t.one_minus_beta2, t.eps, t.decay, t.step_size, t.inv_sqrt_bc2};
    adamw_range_cpu(t.param + pc.lo, t.grad + pc.lo, t.m + pc.lo, t.v + pc.lo, pc.hi - pc.lo, gs, c);
  });
}

void CpuBackend::sgd(const std::vector<SgdTensor>& ts, const GradScale& s) {
  if (dm::update_skipped(s.sumsq, s.skip_non_finite)) return;
  const float gs = dm::grad_factor(s.sumsq, s.max_norm);
  const std::vector<Piece> pieces = pieces_of(ts, [](const SgdTensor& t) { return t.n; });
  parallel_for(static_cast<int64_t>(pieces.size()), [&](int64_t i) {
    const Piece& pc = pieces[static_cast<size_t>(i)];
    const SgdTensor& t = ts[pc.tensor];
    for (int64_t j = pc.lo; j < pc.hi; j++)
      t.param[j] = dm::sgd_element(t.param[j], t.grad[j] * gs, t.buf ? t.buf + j : nullptr, t.lr, t.weight_decay,
                                   t.momentum, t.dampening, t.nesterov, t.first);
  });
}

// The pieces' fp64 sums are added in piece order: the same total whatever the thread count.
void CpuBackend::sum_of_squares(const std::vector<std::pair<const float*, int64_t>>& ts, float* out) {
  const std::vector<Piece> pieces = pieces_of(ts, [](const std::pair<const float*, int64_t>& t) { return t.second; });
  std::vector<double> part(pieces.size(), 0.0);
  parallel_for(static_cast<int64_t>(pieces.size()), [&](int64_t i) {
    const Piece& pc = pieces[static_cast<size_t>(i)];
    part[static_cast<size_t>(i)] = sum_squares_f64_cpu(ts[pc.tensor].first + pc.lo, pc.hi - pc.lo);
  });
  double total = 0.0;
  for (double v : part) total += v;
  *out = static_cast<float>(total);
}

}  // namespace duat
