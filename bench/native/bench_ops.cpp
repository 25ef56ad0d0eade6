// bench_ops.cpp: CPU op benchmark, duat against the system OpenBLAS in the same process.
//   1. Linear forward + backward (three products) at the shapes: duat's linear op with
//      autograd, against cblas_sgemm doing the same three products (bias work not counted).
//   2. LayerNorm, softmax and GELU forward in GB/s (bytes read + written) next to a memory copy
//      of the same bytes, threaded over the same pool.
// Runs are interleaved (duat, reference, duat, ...) and the median is reported, so drift on a
// shared machine hits both sides alike. OpenBLAS's worker threads spin for a while after each
// call (about 2^28 cycles by default) and would steal a core from whatever runs next on a
// 2-core machine, so after each OpenBLAS run the benchmark keeps every core busy (not asleep:
// an idle pause makes this VM's next runs slow) until they have parked, then runs duat once
// untimed, so that both sides are timed warm (OpenBLAS runs right after duat).
// Prints a Markdown table.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/parallel.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "ops/ops.h"

#ifdef DUAT_WITH_OPENBLAS
#include <cblas.h>
extern "C" void openblas_set_num_threads(int);
extern "C" char* openblas_get_config(void);
#endif

using namespace duat;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

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
  std::printf("\n| op | duat GB/s | memory copy GB/s | duat / copy |\n|---|---|---|---|\n");
  bench_bandwidth(4160, 768, reps);
  bench_bandwidth(4160, 192, reps);
  return 0;
}
