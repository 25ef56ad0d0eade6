// gemm.h: single-precision matrix product with run-time ISA dispatch.
//   C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C
// op(A)[i,k] = transA ? A[k*lda + i] : A[i*lda + k]; likewise B. Row-major, float32, fp32
// accumulation. beta = 0 overwrites C (C may hold garbage); beta = 1 accumulates.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace duat {

enum CpuIsa : int { CPU_ISA_GENERIC = 0, CPU_ISA_AVX2 = 1, CPU_ISA_AVX512 = 2 };

const char* cpu_isa_name(CpuIsa isa);
CpuIsa cpu_isa_best();    // the widest the processor supports
CpuIsa cpu_isa_active();  // what sgemm uses now
// Selects the kernels sgemm uses (tests run every path). Throws if the CPU lacks it.
void cpu_isa_set(CpuIsa isa);

// Whether the CPU has AVX512_BF16 (vdpbf16ps) besides the AVX-512 kernels.
bool cpu_has_bf16();
// Whether the CPU has AMX bf16 tiles (AMX-TILE, AMX-BF16) and Linux lets this process use them:
// then bf16 products run on the tiles (sixteen times vdpbf16ps's width), unless DUAT_CPU_AMX=0.
bool cpu_has_amx();
bool cpu_amx_active();
void cpu_amx_set(bool on);  // throws when on and the CPU lacks them (tests run both paths)
// This thread's tiles set up as every AMX kernel here uses them (eight tiles of 16 rows of 64
// bytes), and given back after (x86-64 with AMX only).
void amx_load_config();
void amx_release();

// How sgemm's packed path reads and walks a product, per CPU family: the same sums in the same
// order whichever is set (the same bits), only the memory traffic differs. Chosen at load from
// the CPU's vendor (DUAT_GEMM_TUNING=amd|intel overrides it, for benchmarks).
struct GemmTuning {
  // A transposed A (A^T B, the weight gradients) packed row by row, rows further down asked for
  // ahead, rather than read in place. Its K rows are lda apart, each in a page of its own.
  bool pack_transposed_a;
  // A task's tiles walked row of tiles after row of tiles (C written along its rows, the chunk's
  // packed B read again from L2 for every row of tiles) rather than column panel after column
  // panel (a panel of packed B kept in L1 for the tiles below each other, C written down columns).
  bool tile_rows_outer;
  // Columns of C per chunk of packed B, at most: a multiple of 32 (every kernel's panel width
  // divides it, so no chunk leaves a partial panel within C, whose tiles would round otherwise).
  int64_t chunk_cols;
  // A backward act (GemmAct::grad_sums) applied from the tiles' registers in every block of C,
  // rather than only in blocks too large to stay in L2 for a pass over them after the product
  // (the others get that pass). Either way the same values and the same sums in the same order.
  bool grad_act_tiles = false;
};
// AMD (Zen): transposed A in place, column panels outer, chunks of up to 4096 columns, GELU's
// backward as a pass over blocks that stay in L2. Intel: its L2 prefetcher stops at 4 KiB pages,
// so A^T read in place and C written down columns wait on memory line by line; 1024 columns keep
// a chunk of packed B in its 2 MiB L2; GELU's backward from the tiles (its blocks of 144 x 1024
// stay in L2, but the pass over them, reading the pre-activation, cost more than the tiles'
// share: bench/results/cpu-ab-gelu-grad-tiles.md).
extern const GemmTuning GEMM_TUNING_AMD, GEMM_TUNING_INTEL;
const char* gemm_tuning_name(const GemmTuning& t);  // "amd", "intel" or "custom"
GemmTuning gemm_tuning();                           // what sgemm uses now
void gemm_tuning_set(const GemmTuning& t);          // for tests and benchmarks: every walk

// An epilogue over finished blocks of C: called once for each block of rows [i0, i1) and columns
// [j0, j1) whose sums are complete (every block of C exactly once), on the thread that computed
// it, while the block is still in cache.
using GemmBlockFn = std::function<void(int64_t i0, int64_t i1, int64_t j0, int64_t j1)>;

// A GELU output of a product: p[i * ld + j] = gelu(C[i][j]) for every element of the finished C.
// With grad_sums, GELU's backward instead (p unused): pre holds the pre-activation x, laid out like
// C (rows ld apart), C(i, j) becomes the product times gelu'(x(i, j)), and grad_sums[b * N + j] the
// fp64 sum of the new C(i, j) over the rows i of block b (sgemm_row_blocks), rows in order.
struct GemmAct {
  float* p = nullptr;
  int64_t ld = 0;
  double* grad_sums = nullptr;
  const float* pre = nullptr;
};

// op(B) packed ahead of its products (inference weights, packed once while they are unchanged):
// panels of `width` columns, panel q holding rows k = 0 .. K-1 of columns [q * width, (q + 1) *
// width), `width` floats a row (zeros past N), panel_stride floats from one panel to the next. A
// product reads its panels where they serve (the fp32 register tiles of that width, B not read
// in place) instead of B: B's rows are read in order, where the rows of a wide B are pages apart
// and not prefetched (Para-Former-1-12's batch-1 forward pass 22% faster,
// bench/results/cpu-ab-packed-weights.md).
struct PackedB {
  const float* data = nullptr;
  int width = 0;
  int64_t panel_stride = 0;
};
// A's rows normalised as the product reads them (inference: a LayerNorm without affine fused into
// the product after it): op(A)'s row m is taken as LayerNorm(A's row m + resid's row m % resid_rows),
// eps inside the root, exactly as layernorm_row_cpu makes it of that sum (kernels.h). A row-major
// (transA false); resid optional (rows resid_ld apart). Where a few rows meet a row-major B
// (a batch-1 forward pass) each thread normalises every row into its own cache before its share
// of B's panels, so the rows it reads are its own writes rather than the other cores' (which the
// LayerNorm before the product would have left them); elsewhere A is normalised into scratch first.
struct RowNorm {
  float eps = 1e-6f;
  const float* resid = nullptr;
  int64_t resid_ld = 0, resid_rows = 0;
};

// n floats of the scratch v, starting on a 64-byte cache line (v grows to hold them).
float* line_aligned(std::vector<float>& v, int64_t n);

// The panels' width the active fp32 kernels read (KernelInfo's NR).
int sgemm_panel_width();
// out: the ceil(N / width) panels of a row-major B (K x N, rows ldb apart) for `width` =
// sgemm_panel_width(), K * width floats apart; on the pool.
void sgemm_pack_b(int64_t K, int64_t N, const float* B, int64_t ldb, float* out);

// parallel = false keeps the product on the calling thread (for callers that already split
// work over the pool). bias (length N, optional) is added to every row of C in the same pass:
// C = alpha * op(A) op(B) + beta * C + bias. bf16: the packed path rounds A and B to bf16 and
// sums their products in fp32 (where the AVX-512 kernels are active and the CPU has AVX512_BF16;
// small products and those of few rows stay fp32). act (optional): C's GELU is written there too,
// from the tiles' registers on the packed AVX-512 paths (C is not read back), elsewhere over
// finished blocks; before `epilogue` sees the block either way. A backward act (grad_sums; beta
// 0, no bias) is applied from the tiles' registers on the packed AVX-512 fp32 path only: every
// block not done so is left as the product and handed to `epilogue`, which must then do it; the
// blocks done so are not. packed (optional): op(B) as PackedB, the same values as B; read instead
// of B in fp32 products whose tiles are its width (B itself everywhere else), with the same sums
// in the same order: the same bits either way. norm (optional): A's rows normalised (RowNorm),
// the same bits as the product of the normalised rows.
void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc, bool parallel = true,
           const float* bias = nullptr, bool bf16 = false, const GemmBlockFn* epilogue = nullptr,
           const GemmAct* act = nullptr, const PackedB* packed = nullptr, const RowNorm* norm = nullptr);

// The blocks of rows sgemm's packed path hands its epilogue: a product of M rows is cut into
// `count` blocks (an even number where there are several, of near-equal multiples of 12 rows up to
// 144: two threads' shares of them balance), block b being rows [start(b), start(b + 1)); of(row)
// is the block that holds a row. They depend on M alone: a caller that keeps sums per block of
// rows keeps them the same whatever the number of threads.
struct SgemmRowBlocks {
  int64_t rows;   // M
  int64_t units;  // M in units of 12 rows, the last maybe partial
  int64_t count;
  int64_t start(int64_t b) const;
  int64_t of(int64_t row) const;
};
SgemmRowBlocks sgemm_row_blocks(int64_t M);  // M >= 1

// Whether sgemm's packed path, with a GELU output (act), stores C past the caches for these sizes
// (non-temporal stores of whole, 64-byte aligned tile rows): a large C written once, with the
// AVX-512 kernels. The same values either way; for tests.
bool sgemm_streams_c(int64_t M, int64_t N, int64_t K, float beta);

// The products' ceiling on this CPU: GFLOP/s of the active fp32 register tile (MR x NR, K 256)
// on one thread, its panels in L1 and its C tile summed into again and again, as in a product's
// inner loop with no packing, no memory traffic and no other thread; timed as
// measure_peak_gflops is (peak.h, best_run_seconds: about `seconds`, the fastest of five runs).
// Against that peak on one thread it tells how much of the FMA peak the kernel itself can use; a
// whole product's rate against it, how much packing, memory and threads cost.
double sgemm_micro_gflops(double seconds);

// A small product on the calling thread (attention's per-head matrices, for callers that share
// work out over the pool themselves): C = alpha * op(A) op(B) + beta * C. With the AVX-512
// kernels, register tiles read A and a row-major B in place whatever the size (a transposed B is
// first transposed into scratch); elsewhere it is sgemm.
void sgemm_small(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Attention's per-head steps after a small product, done on each vector of C as the product
// finishes it (C = alpha * op(A) op(B), M x N, row stride ldc):
enum class SmallThen {
  col_max,       // C, and max[j] = max(max[j], C[i][j] over the rows i) (NaN skipped; max set by the caller)
  exp_shift,     // exp(C[i][j] - col[j]): probabilities rebuilt from their log-sum-exp
  row_scale,     // C[i][j] * row[i]
};
// What the step reads and writes: N floats of max and col, M of row.
struct SmallThenArgs {
  float* max = nullptr;
  const float* col = nullptr;
  const float* row = nullptr;
};
// sgemm_small with beta 0 and `then` applied (exp: math.h's fast_exp), on the calling thread.
void sgemm_small_then(SmallThen then, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                      const SmallThenArgs& args);

}  // namespace duat
