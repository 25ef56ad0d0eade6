// bench_ops.cpp: CPU op benchmark, duat against the system OpenBLAS in the same process.
//   1. Linear forward + backward (three products) at the shapes: duat's linear op with
//      autograd, against cblas_sgemm doing the same three products (bias work not counted).
//   2. The products of a training step and of a batch-1 forward at their shapes and layouts
//      (Para-Former-1-4 and ViT-4, width 192, 50 tokens, batch 64): sgemm against cblas_sgemm,
//      with the fraction of the machine's measured float32 peak.
//   3. LayerNorm, softmax and GELU forward in GB/s (bytes read + written) next to a memory copy
//      of the same bytes, threaded over the same pool.
//   4. The training step's kernels besides the products, at Para-Former-1-4's shapes: attention
//      forward and backward in GFLOP/s and fraction of peak; GELU's gradient with its bias sums,
//      the bias reductions, LayerNorm's backward with its weight and bias sums and the stage
//      epilogue's combine in GB/s next to a memory copy of the same bytes.
// Runs are interleaved (duat, reference, duat, ...) and the median is reported, so drift on a
// shared machine hits both sides alike. OpenBLAS's worker threads spin for a while after each
// call (about 2^28 cycles by default) and would steal a core from whatever runs next on a
// 2-core machine, so after each OpenBLAS run the benchmark keeps every core busy (not asleep:
// an idle pause makes this VM's next runs slow) until they have parked, then runs duat once
// untimed, so that both sides are timed warm (OpenBLAS runs right after duat).
// Prints a Markdown table.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/parallel.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "cpu/peak.h"
#include "ops/ops.h"
#include "bench_util.h"

#ifdef DUAT_WITH_OPENBLAS
#include <cblas.h>
extern "C" void openblas_set_num_threads(int);
extern "C" char* openblas_get_config(void);
#endif

using namespace duat;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

using duat_bench::median;

// Times a and b interleaved; returns their median seconds. settle_ms: idle time after each b.
std::pair<double, double> race(const std::function<void()>& a, const std::function<void()>& b, int reps,
                               int settle_ms = 0) {
  // Busy on every pool thread, not asleep: an idle pause makes this VM's next ~20 ms slow.
  auto settle = [&] {
    if (!settle_ms) return;
    const double until = now() + settle_ms / 1000.0;
    parallel_for(get_num_threads(), [&](int64_t) {
      while (now() < until) {
      }
    });
  };
  for (int i = 0; i < 3; i++) {
    a();
    if (b) {
      b();
      settle();
    }
  }
  std::vector<double> ta, tb;
  for (int i = 0; i < reps; i++) {
    if (settle_ms) a();  // after the pause, warm up again so both sides are timed warm
    double t0 = now();
    a();
    ta.push_back(now() - t0);
    if (b) {
      t0 = now();
      b();
      tb.push_back(now() - t0);
      settle();
    }
  }
  return {median(ta), b ? median(tb) : 0.0};
}

void bench_linear(int64_t M, int64_t in, int64_t out, int reps) {
  Tensor x = randn({M, in}, 1, 0, 1), w = randn({out, in}, 2, 0, 0.05f), b = zeros({out});
  Tensor dy = randn({M, out}, 3, 0, 1);
  x->requires_grad = w->requires_grad = b->requires_grad = true;
  auto duat_step = [&] {
    Tensor y = linear(x, w, b);
    backward(y, dy);
    x->grad = w->grad = b->grad = nullptr;
  };
  const double flops = 3.0 * 2.0 * M * in * out;
  std::function<void()> blas_step;
#ifdef DUAT_WITH_OPENBLAS
  static std::vector<float> Y, DX, DW;
  Y.resize(M * out), DX.resize(M * in), DW.resize(out * in);
  if (!std::getenv("DUAT_BENCH_NO_BLAS")) blas_step = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, out, in, 1, x->f32(), in, w->f32(), in, 0, Y.data(), out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, in, out, 1, dy->f32(), out, w->f32(), in, 0, DX.data(), in);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, M, 1, dy->f32(), out, x->f32(), in, 0, DW.data(), in);
  };
#endif
  auto [td, tb] = race(duat_step, blas_step, reps, 300);
  const double gd = flops / td / 1e9;
  if (blas_step) {
    const double gb = flops / tb / 1e9;
    std::printf("| linear fwd+bwd %lld x %lld -> %lld | %.1f | %.1f | %.2fx |\n", (long long)M, (long long)in,
                (long long)out, gd, gb, gd / gb);
  } else {
    std::printf("| linear fwd+bwd %lld x %lld -> %lld | %.1f | (no OpenBLAS) | |\n", (long long)M, (long long)in,
                (long long)out, gd);
  }
}

struct Product {
  const char* what;
  bool ta, tb;
  int64_t M, N, K, ldc;  // ldc 0: N
};

void bench_product(const Product& p, double peak, int reps) {
  const int64_t lda = p.ta ? p.M : p.K, ldb = p.tb ? p.K : p.N, ldc = p.ldc ? p.ldc : p.N;
  Tensor a = randn({p.M * p.K}, 5, 0, 1), b = randn({p.K * p.N}, 6, 0, 1), c = empty({p.M * ldc});
  auto duat_run = [&] { sgemm(p.ta, p.tb, p.M, p.N, p.K, 1.0f, a->f32(), lda, b->f32(), ldb, 0.0f, c->f32(), ldc); };
  std::function<void()> blas_run;
#ifdef DUAT_WITH_OPENBLAS
  static std::vector<float> C2;
  C2.resize(p.M * ldc);
  if (!std::getenv("DUAT_BENCH_NO_BLAS")) blas_run = [&] {
    cblas_sgemm(CblasRowMajor, p.ta ? CblasTrans : CblasNoTrans, p.tb ? CblasTrans : CblasNoTrans, p.M, p.N, p.K, 1,
                a->f32(), lda, b->f32(), ldb, 0, C2.data(), ldc);
  };
#endif
  auto [td, tb] = race(duat_run, blas_run, reps, 300);
  const double flops = 2.0 * p.M * p.N * p.K, gd = flops / td / 1e9;
  char shape[96];
  std::snprintf(shape, sizeof shape, "%lld x %lld x %lld%s%s%s", (long long)p.M, (long long)p.N, (long long)p.K,
                p.ta ? " A^T" : "", p.tb ? " B^T" : "", ldc != p.N ? " (C rows 12 KiB apart)" : "");
  if (blas_run) {
    const double gb = flops / tb / 1e9;
    std::printf("| %s | %s | %.1f | %.0f%% | %.1f | %.2fx |\n", p.what, shape, gd, 100.0 * gd / peak, gb, gd / gb);
  } else {
    std::printf("| %s | %s | %.1f | %.0f%% | (no OpenBLAS) | |\n", p.what, shape, gd, 100.0 * gd / peak);
  }
}

void bench_bandwidth(int64_t rows, int64_t C, int reps) {
  const int64_t n = rows * C;
  Tensor x = randn({rows, C}, 4, 0, 1), y = empty({rows, C}), w = full({C}, 1.0f), b = zeros({C});
  Tensor mean = empty({rows}), rstd = empty({rows});
  float* px = x->f32();
  float* py = y->f32();
  auto copy = [&] {
    parallel_for_range(n, 1 << 15, [&](int64_t lo, int64_t hi) { std::memcpy(py + lo, px + lo, (hi - lo) * 4); });
  };
  const double bytes = 2.0 * n * 4;
  struct Case {
    const char* name;
    std::function<void()> fn;
  };
  const Case cases[] = {
      {"layernorm", [&] { layernorm_forward_cpu(px, w->f32(), b->f32(), py, mean->f32(), rstd->f32(), rows, C, 1e-6f); }},
      {"softmax", [&] { softmax_forward_cpu(px, py, rows, C); }},
      {"gelu", [&] { gelu_forward_cpu(px, py, n); }},
  };
  for (const Case& c : cases) {
    auto [tk, tc] = race(c.fn, copy, reps);
    std::printf("| %s forward %lld x %lld | %.1f | %.1f | %.0f%% |\n", c.name, (long long)rows, (long long)C,
                bytes / tk / 1e9, bytes / tc / 1e9, 100.0 * tc / tk);
  }
}

// Para-Former-1-4's attention (batch 64, 50 tokens, 4 branches of 3 heads of 64) in GFLOP/s:
// the analytic FLOPs of its per-head products (forward 2, backward 4, each 2*T*T*D) over the time.
void bench_attention(double peak, int reps) {
  const dm::AttnLayout L{50, 192, 4, 3, 64};
  const int64_t B = 64, in = B * L.T * L.ld_in(), out_n = B * L.T * L.ld_out(), stats = B * L.N * L.H * L.T;
  Tensor qkv = randn({in}, 7, 0, 1), dout = randn({out_n}, 8, 0, 1), out = empty({out_n}), lse = empty({stats});
  Tensor dqkv = empty({in});
  Backend& be = cpu_backend();
  const double head = 2.0 * L.T * L.T * L.D * B * L.N * L.H;
  const std::function<void()> none;
  const double tf = race([&] { be.attention_forward(L, B, qkv->f32(), out->f32(), lse->f32()); }, none, reps).first;
  const double tb = race([&] {
    be.attention_backward(L, B, dout->f32(), qkv->f32(), out->f32(), lse->f32(), nullptr, dqkv->f32());
  }, none, reps).first;
  std::printf("| attention forward, 64 x 50 tokens, 4 x 3 heads of 64 | %.1f | %.0f%% |\n", 2 * head / tf / 1e9,
              100.0 * 2 * head / tf / 1e9 / peak);
  std::printf("| attention backward (scores rebuilt), same | %.1f | %.0f%% |\n", 4 * head / tb / 1e9,
              100.0 * 4 * head / tb / 1e9 / peak);
}

// The step's reductions and row kernels in GB/s against a copy of the bytes they read and write.
void bench_step_reductions(int reps) {
  const int64_t R = 3200;
  Tensor x = randn({R * 3072}, 9, 0, 1), dy = randn({R * 3072}, 10, 0, 1), dx = empty({R * 3072});
  Tensor db = empty({3072}), sum = empty({R * 192}), from = randn({R * 4608}, 11, 0, 1), to = empty({R * 4608});
  Backend& be = cpu_backend();
  // The copy moves as many bytes as the kernel reads and writes (half read, half written).
  auto row = [&](const char* name, const std::function<void()>& fn, int64_t bytes) {
    const int64_t n = bytes / 8;
    auto copy = [&] {
      parallel_for_range(n, 1 << 15, [&](int64_t lo, int64_t hi) {
        std::memcpy(to->f32() + lo, from->f32() + lo, (hi - lo) * 4);
      });
    };
    auto [tk, tc] = race(fn, copy, reps);
    std::printf("| %s | %.1f | %.1f | %.0f%% |\n", name, bytes / tk / 1e9, bytes / tc / 1e9, 100.0 * tc / tk);
  };
  // Reads x and dy, writes dx: 3 floats an element (the sums are 3072 more).
  row("GELU gradient with bias sums, 3200 x 3072", [&] {
    be.gelu_backward_bias(x->f32(), dy->f32(), dx->f32(), db->f32(), 1, R, 3072, false);
  }, 3 * R * 3072 * 4);
  // The QKV bias gradient: 4 branches of 576 columns side by side (rows 2304 floats apart).
  ReduceArgs qkv;
  qkv.nd = 3, qkv.shape[0] = 4, qkv.shape[1] = R, qkv.shape[2] = 576;
  qkv.in = x->f32(), qkv.in_strides[0] = 576, qkv.in_strides[1] = 2304, qkv.in_strides[2] = 1;
  qkv.out = db->f32(), qkv.out_strides[0] = 576, qkv.out_strides[1] = 0, qkv.out_strides[2] = 1;
  row("reduce 4 x 3200 x 576 -> 4 x 576 (QKV bias gradient)", [&] { be.reduce(qkv); }, 4 * R * 576 * 4);
  // The stage input's gradient: 4 branches' (3200 x 192) summed.
  ReduceArgs branches;
  branches.nd = 2, branches.shape[0] = 4, branches.shape[1] = R * 192;
  branches.in = x->f32(), branches.in_strides[0] = R * 192, branches.in_strides[1] = 1;
  branches.out = sum->f32(), branches.out_strides[0] = 0, branches.out_strides[1] = 1;
  row("reduce 4 x 614400 -> 614400 (branches summed)", [&] { be.reduce(branches); }, 5 * R * 192 * 4);
  // LayerNorm's backward with the weight and bias sums (a ViT block's LN1): reads x and dy,
  // writes dx (the sums are 2 x 192 more).
  Tensor w = randn({192}, 12, 1, 0.1f), mean = randn({R}, 13, 0, 0.1f), rstd = randn({R}, 14, 1, 0.05f);
  Tensor dw = empty({192}), dbias = empty({192});
  row("LayerNorm backward with weight and bias sums, 3200 x 192", [&] {
    layernorm_backward_cpu(x->f32(), w->f32(), mean->f32(), rstd->f32(), dy->f32(), dx->f32(), dw->f32(),
                           dbias->f32(), R, 192, false);
  }, 3 * R * 192 * 4);
  // The stage epilogue of fc2 over 4 branches, row by row as sgemm's blocks run it: reads the
  // product, the residual and 4 attention outputs, writes the stage's output.
  row("stage epilogue combine, 4 branches, 3200 x 192", [&] {
    parallel_for_range(R, 64, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++)
        stage_combine_range_cpu(sum->f32() + i * 192, dx->f32() + i * 192, dy->f32() + i * 192, x->f32() + i * 192, 4,
                                R * 192, 0.25f, 0.0f, 192);
    });
  }, 7 * R * 192 * 4);
}

// A batch-1 forward's LayerNorm rows (50 tokens of 192) on the calling thread, as the fused
// products normalise their input (layernorm_rows_cpu, with and without a residual), on every
// instruction set the CPU has: microseconds a call, each timing 200 calls.
void bench_row_kernels_b1(int reps) {
  constexpr int64_t T = 50, C = 192, CALLS = 200;
  Tensor x = randn({T * C}, 15, 0, 1), res = randn({T * C}, 16, 0, 1), y = empty({T * C});
  Tensor w = randn({C}, 17, 1, 0.1f), b = randn({C}, 18, 0, 0.1f), mean = empty({T}), rstd = empty({T});
  const ResidualRows resid{res->f32(), C, T, 0};
  const CpuIsa saved = cpu_isa_active();
  const std::function<void()> none;
  for (const bool with_resid : {false, true}) {
    std::printf("| LayerNorm rows, %lld x %lld%s |", (long long)T, (long long)C, with_resid ? ", residual added" : "");
    for (int isa = cpu_isa_best(); isa >= 0; isa--) {
      cpu_isa_set(static_cast<CpuIsa>(isa));
      const double t = race([&] {
        for (int64_t i = 0; i < CALLS; i++)
          layernorm_rows_cpu(x->f32(), C, w->f32(), b->f32(), y->f32(), C, mean->f32(), rstd->f32(), T, C, 1e-6f,
                             with_resid ? &resid : nullptr);
      }, none, reps).first;
      std::printf(" %.2f (%s) |", 1e6 * t / CALLS, cpu_isa_name(static_cast<CpuIsa>(isa)));
    }
    std::printf("\n");
  }
  cpu_isa_set(saved);
}

// The products of a ViT-12 batch-1 forward pass (50 rows; per block QKV 576 x 192, proj 192 x 192,
// fc1 768 x 192, fc2 192 x 768, packed B) in microseconds a pass, interleaved: one block's weights
// read by all twelve (in L2), twelve blocks' on 4 KiB pages (from L3: 21 MB), and twelve blocks'
// as the model keeps them (lasting blocks, on huge pages where the system grants them).
void bench_weights_in_l3(int reps) {
  struct Shape2 {
    int64_t N, K;
  };
  const Shape2 shapes[] = {{576, 192}, {192, 192}, {768, 192}, {192, 768}};
  constexpr int BLOCKS = 12;
  const int W = sgemm_panel_width();
  Backend& be = cpu_backend();
  Tensor a = randn({50 * 768}, 19, 0, 1), c = empty({50 * 768}), b = randn({768 * 768}, 20, 0, 0.05f);
  struct Block {
    float* p;
    size_t capacity;
    bool lasting;
  };
  std::vector<Block> blocks;
  std::vector<std::vector<const float*>> sets(3);
  for (int set = 0; set < 3; set++)
    for (int blk = 0; blk < BLOCKS; blk++)
      for (const Shape2& sh : shapes) {
        const size_t bytes = static_cast<size_t>((sh.N + W - 1) / W * sh.K * W) * 4;
        if (set == 0 && blk > 0) {
          sets[0].push_back(sets[0][&sh - shapes]);  // block 0's again
          continue;
        }
        Block k{nullptr, 0, set == 2};
        k.p = static_cast<float*>(k.lasting ? be.allocate_lasting(bytes, &k.capacity)
                                            : std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096));
        sgemm_pack_b(sh.K, sh.N, b->f32(), sh.N, k.p);
        blocks.push_back(k);
        sets[set].push_back(k.p);
      }
  double t[3];
  auto pass = [&](int set) {
    for (int blk = 0; blk < BLOCKS; blk++)
      for (int i = 0; i < 4; i++) {
        const Shape2& sh = shapes[i];
        const PackedB pb{sets[set][blk * 4 + i], W, sh.K * W};
        sgemm(false, false, 50, sh.N, sh.K, 1.0f, a->f32(), sh.K, b->f32(), sh.N, 0.0f, c->f32(), sh.N, true, nullptr,
              false, nullptr, nullptr, &pb);
      }
  };
  std::vector<double> times[3];
  for (int r = 0; r < reps; r++)
    for (int set = 0; set < 3; set++) {
      pass(set);  // (its first half was evicted by the other sets' passes)
      const double t0 = now();
      pass(set);
      times[set].push_back(now() - t0);
    }
  for (int set = 0; set < 3; set++) {
    std::sort(times[set].begin(), times[set].end());
    t[set] = times[set][times[set].size() / 2];
  }
  std::printf("| ViT-12 batch-1 products, one block's weights twelve times (in L2) | %.0f | 1.00 |\n", 1e6 * t[0]);
  std::printf("| the same, twelve blocks' weights on 4 KiB pages (from L3) | %.0f | %.2f |\n", 1e6 * t[1], t[1] / t[0]);
  std::printf("| the same, twelve blocks' weights as the model keeps them (lasting blocks) | %.0f | %.2f |\n", 1e6 * t[2],
              t[2] / t[0]);
  for (const Block& k : blocks) k.lasting ? be.release(k.p, k.capacity) : std::free(k.p);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = argc > 1 ? std::atoi(argv[1]) : 0;
  set_num_threads(threads);
  threads = get_num_threads();
  const int reps = argc > 2 ? std::atoi(argv[2]) : 21;
#ifdef DUAT_WITH_OPENBLAS
  openblas_set_num_threads(threads);
  std::printf("OpenBLAS: %s\n", openblas_get_config());
#endif
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  std::printf("duat kernels: %s; threads: %d; OPENBLAS_CORETYPE=%s; median of %d interleaved runs\n\n",
              cpu_isa_name(cpu_isa_active()), threads, coretype ? coretype : "(unset)", reps);
  std::printf("| op | duat GFLOP/s | OpenBLAS GFLOP/s | duat / OpenBLAS |\n|---|---|---|---|\n");
  bench_linear(4160, 192, 576, reps);
  bench_linear(4160, 768, 768, reps);
  const PeakKind kind = cpu_isa_active() == CPU_ISA_AVX512 ? PEAK_FP32_AVX512 : PEAK_FP32_AVX2;
  const double peak = peak_supported(kind) ? measure_peak_gflops(kind, threads, 1.0) : 0.0;
  std::printf("\nMeasured float32 peak (%s FMA chains, %d threads): %.0f GFLOP/s\n",
              kind == PEAK_FP32_AVX512 ? "512-bit" : "256-bit", threads, peak);
  if (peak > 0.0) {
    // The products' ceiling: their register tile alone, on one thread (gemm.h, sgemm_micro_gflops),
    // timed as the peak is (each the fastest of five runs).
    const double micro = sgemm_micro_gflops(1.0), peak1 = measure_peak_gflops(kind, 1, 1.0);
    std::printf("Micro-kernel (the products' register tile on panels in L1, one thread): %.0f GFLOP/s, %.0f%% of the "
                "one-thread peak (%.0f GFLOP/s)\n",
                micro, 100.0 * micro / peak1, peak1);
  }
  std::printf("\n");
  std::printf("| product | M x N x K | duat GFLOP/s | of peak | OpenBLAS GFLOP/s | duat / OpenBLAS |\n|---|---|---|---|---|---|\n");
  const Product products[] = {
      {"fc1 forward, one branch", false, false, 3200, 768, 192, 0},
      {"fc2 forward, 4 branches summed", false, false, 3200, 192, 3072, 0},
      {"fc2 backward dH, 4 branches side by side", false, false, 3200, 3072, 192, 0},
      {"fc1 backward dX, one branch", false, false, 3200, 192, 768, 0},
      {"qkv forward, 4 branches side by side", false, false, 3200, 2304, 192, 0},
      {"fc1 weight gradient, 4 branches side by side", true, false, 192, 3072, 3200, 0},
      {"fc1 weight gradient, one layer", true, false, 192, 768, 3200, 0},
      {"fc2 weight gradient", true, false, 768, 192, 3200, 0},
      {"qkv weight gradient", true, false, 576, 192, 3200, 0},
      {"proj weight gradient", true, false, 192, 192, 3200, 0},
      {"fc1 forward, one of 4 branches in place", false, false, 3200, 768, 192, 3072},
      {"batch 1: qkv", false, false, 50, 576, 192, 0},
      {"batch 1: proj", false, false, 50, 192, 192, 0},
      {"batch 1: fc1", false, false, 50, 768, 192, 0},
      {"batch 1: fc2", false, false, 50, 192, 768, 0},
      {"batch 1: fc1, 4 branches", false, false, 50, 3072, 192, 0},
      {"batch 1: fc2, 4 branches summed", false, false, 50, 192, 3072, 0},
  };
  for (const Product& p : products) bench_product(p, peak, reps);
  std::printf("\n| op | duat GB/s | memory copy GB/s | duat / copy |\n|---|---|---|---|\n");
  bench_bandwidth(4160, 768, reps);
  bench_bandwidth(4160, 192, reps);
  std::printf("\n| step kernel | duat GFLOP/s | of peak |\n|---|---|---|\n");
  bench_attention(peak, reps);
  std::printf("\n| step kernel | duat GB/s | memory copy GB/s | duat / copy |\n|---|---|---|---|\n");
  bench_step_reductions(reps);
  std::printf("\n| batch-1 row kernel, one thread | us a call, widest ISA first | | |\n|---|---|---|---|\n");
  bench_row_kernels_b1(reps);
  std::printf("\n| weights of a batch-1 pass | us a pass | against L2 |\n|---|---|---|\n");
  bench_weights_in_l3(reps);
  return 0;
}
