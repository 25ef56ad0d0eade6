// bench_fusion.cpp: fusions and ways of sharing work that the training step does not use, timed
// against what it does, so that the reasons stay checkable (bench/results/cpu-ab-fusion.md and
// cpu-ab-scheduling.md). The operands a pass starts from are evicted from the caches first, as they
// are in a step, where other layers' data passes between a tensor's writing and its reading; what a
// pass makes (dh, dpre) is read warm, as in the step. (An op timed on evicted inputs that the step
// reads warm from the product before it misleads: see cpu-ab-fusion.md.) Each cell: the fastest of
// 10 passes in a round, the median over 5 rounds, the variants interleaved within each round.
//   1. GELU's backward of the MLP: the tree's way (the dh product, then gelu_backward_bias: dpre
//      and the bias sums in one pass), against dpre from the product's own epilogue (each finished
//      block multiplied by gelu'(pre) in cache) and the bias sums as a reduction after it.
//   2. gelu_backward_bias against an add over the same bytes (three streams): its arithmetic.
//   3. The products of 3200 rows on the pool (row blocks in contiguous shares, parallel_for_shares;
//      one packed B shared), against the rows cut in one even share per thread, each share a
//      one-thread product with its own packed B; warm (the operands in cache from the pass
//      before) and evicted. And one thread's product alone, against the same while another
//      thread runs the same product on operands of its own: what two cores lose to each other.
//   duat_bench_fusion [threads]
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "core/backend.h"
#include "core/parallel.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "bench_util.h"

using namespace duat;

namespace {

using Fn = std::function<void()>;
using Floats = std::vector<float>;

Floats randn(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  Floats v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Writes 64 MiB on every thread of the pool, pushing the operands out of L1, L2 and most of L3.
void evict() {
  static std::vector<Floats> junk(static_cast<size_t>(get_num_threads()), Floats(size_t{16} << 20));
  parallel_for(get_num_threads(), [](int64_t t) {
    for (float& x : junk[static_cast<size_t>(t)]) x += 1.0f;
  });
}

// Milliseconds of each variant (see the header), the variants interleaved; `cold`: operands evicted
// before every pass.
std::vector<double> race(const std::vector<Fn>& variants, bool cold = true) {
  std::vector<std::vector<double>> rounds(variants.size());
  for (int r = 0; r < 5; r++)
    for (size_t v = 0; v < variants.size(); v++) {
      double best = 1e30;
      for (int i = 0; i < 10; i++) {
        if (cold) evict();
        const auto t0 = std::chrono::steady_clock::now();
        variants[v]();
        best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      rounds[v].push_back(best);
    }
  std::vector<double> out;
  for (const auto& r : rounds) out.push_back(duat_bench::median(r));
  return out;
}

// Row sums of a (rows, cols) block into out (cols), as the backend's reduce.
void column_sums(const float* x, int64_t rows, int64_t cols, float* out) {
  ReduceArgs a;
  a.nd = 2, a.shape[0] = rows, a.shape[1] = cols;
  a.in = x, a.in_strides[0] = cols, a.in_strides[1] = 1;
  a.out = out, a.out_strides[0] = 0, a.out_strides[1] = 1;
  cpu_backend().reduce(a);
}

// 1 and 2 for `layers` MLPs of R rows, width C and hidden size M (every branch side by side).
void gelu_rows(const char* name, int64_t layers, int64_t R, int64_t C, int64_t M, std::mt19937& rng) {
  std::vector<Floats> dy, pre, out;
  for (int64_t l = 0; l < layers; l++) dy.push_back(randn(R * C, rng)), pre.push_back(randn(R * M, rng)), out.push_back(Floats(R * M));
  const Floats w = randn(C * M, rng);
  Floats db(M);
  Backend& be = cpu_backend();
  auto product = [&](int64_t l, const GemmBlockFn* epilogue) {
    sgemm(false, false, R, M, C, 1.0f, dy[l].data(), C, w.data(), M, 0.0f, out[l].data(), M, true, nullptr, false, epilogue);
  };
  const Fn tree = [&] {
    for (int64_t l = 0; l < layers; l++) {
      product(l, nullptr);
      be.gelu_backward_bias(pre[l].data(), out[l].data(), out[l].data(), db.data(), 1, R, M, false);
    }
  };
  const Fn fused = [&] {
    for (int64_t l = 0; l < layers; l++) {
      float* o = out[l].data();
      const float* p = pre[l].data();
      const GemmBlockFn grad = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
        for (int64_t i = i0; i < i1; i++) gelu_backward_range_cpu(p + i * M + j0, o + i * M + j0, o + i * M + j0, j1 - j0, false);
      };
      product(l, &grad);
      column_sums(o, R, M, db.data());
    }
  };
  const Fn gelu_only = [&] {
    for (int64_t l = 0; l < layers; l++)
      be.gelu_backward_bias(pre[l].data(), out[l].data(), out[l].data(), db.data(), 1, R, M, false);
  };
  const Fn add_only = [&] {
    for (int64_t l = 0; l < layers; l++) {
      MapArgs a;
      a.op = MAP_ADD, a.nd = 1, a.shape[0] = R * M;
      a.out = out[l].data(), a.a = pre[l].data(), a.b = out[l].data();
      a.out_strides[0] = a.a_strides[0] = a.b_strides[0] = 1;
      be.map(a);
    }
  };
  const std::vector<double> t = race({tree, fused, gelu_only, add_only});
  std::printf("| %s: dh product + gelu_backward_bias | %.2f | dpre in the product's epilogue + bias reduction | %.2f | %+.1f%% |\n",
              name, t[0], t[1], 100.0 * (t[1] / t[0] - 1.0));
  std::printf("| %s: gelu_backward_bias | %.2f | an add over the same bytes | %.2f | %+.1f%% |\n", name, t[2], t[3],
              100.0 * (t[3] / t[2] - 1.0));
}

// 3 for an M x N x K product (row-major A and B).
void sharing_rows(int64_t M, int64_t N, int64_t K, std::mt19937& rng) {
  const Floats a = randn(M * K, rng), b = randn(K * N, rng);
  Floats c(M * N);
  const int64_t threads = get_num_threads();
  const Fn pool = [&] { sgemm(false, false, M, N, K, 1.0f, a.data(), K, b.data(), N, 0.0f, c.data(), N, true); };
  const Fn shares = [&] {
    parallel_for(threads, [&](int64_t t) {  // row boundaries on multiples of 48 (every kernel's MR divides it)
      const int64_t r0 = M / 48 * t / threads * 48, r1 = t + 1 == threads ? M : M / 48 * (t + 1) / threads * 48;
      sgemm(false, false, r1 - r0, N, K, 1.0f, a.data() + r0 * K, K, b.data(), N, 0.0f, c.data() + r0 * N, N, false);
    });
  };
  const double gflop = 2.0 * static_cast<double>(M * N * K) / 1e6;  // per ms: GFLOP/s
  for (bool cold : {false, true}) {
    const std::vector<double> t = race({pool, shares}, cold);
    std::printf("| %ldx%ldx%ld, %s | %.0f | %.0f | %+.1f%% |\n", static_cast<long>(M), static_cast<long>(N),
                static_cast<long>(K), cold ? "evicted" : "warm", gflop / t[0], gflop / t[1], 100.0 * (t[0] / t[1] - 1.0));
  }
}

// 3, the second part: one thread's product of `rows` rows alone, and while another thread runs the
// same product on operands of its own (warm: each thread's operands stay in its own caches).
void side_by_side(int64_t rows, int64_t N, int64_t K, std::mt19937& rng) {
  const Floats a = randn(rows * K, rng), b = randn(K * N, rng), a2 = randn(rows * K, rng), b2 = randn(K * N, rng);
  Floats c(rows * N), c2(rows * N);
  auto product = [&](const Floats& x, const Floats& w, Floats& out) {
    sgemm(false, false, rows, N, K, 1.0f, x.data(), K, w.data(), N, 0.0f, out.data(), N, false);
  };
  auto fastest_of_10 = [&] {
    double best = 1e30;
    for (int i = 0; i < 10; i++) {
      const auto t0 = std::chrono::steady_clock::now();
      product(a, b, c);
      best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  std::vector<double> alone, beside;
  for (int r = 0; r < 5; r++) {
    alone.push_back(fastest_of_10());
    std::atomic<bool> done{false};
    std::thread other([&] {
      while (!done.load(std::memory_order_relaxed)) product(a2, b2, c2);
    });
    beside.push_back(fastest_of_10());
    done = true;
    other.join();
  }
  const double gflop = 2.0 * static_cast<double>(rows * N * K) / 1e6;
  const double ta = duat_bench::median(alone), tb = duat_bench::median(beside);
  std::printf("| %ldx%ldx%ld on one thread | %.0f | %.0f | %+.1f%% |\n", static_cast<long>(rows), static_cast<long>(N),
              static_cast<long>(K), gflop / ta, gflop / tb, 100.0 * (tb / ta - 1.0));
}

}  // namespace

int main(int argc, char** argv) {
  set_num_threads(argc > 1 ? std::atoi(argv[1]) : 2);
  std::mt19937 rng(7);
  std::printf("%d threads, %s kernels; ms per pass, operands evicted first\n\n", get_num_threads(),
              cpu_isa_name(cpu_isa_active()));
  std::printf("| tree | ms | alternative | ms | change |\n|---|---|---|---|---|\n");
  gelu_rows("ViT-4 (4 x 3200x768x192)", 4, 3200, 192, 768, rng);
  gelu_rows("Para-Former-1-4 (3200x3072x192)", 1, 3200, 192, 3072, rng);
  std::printf("\n| product | pool GFLOP/s | one share per thread GFLOP/s | shares faster by |\n|---|---|---|---|\n");
  for (const auto& s : {std::array<int64_t, 3>{3200, 192, 768}, {3200, 768, 192}, {3200, 576, 192}, {3200, 192, 576},
                        {3200, 192, 192}})
    sharing_rows(s[0], s[1], s[2], rng);
  std::printf("\n| product | alone GFLOP/s | beside another thread's product GFLOP/s | alone faster by |\n|---|---|---|---|\n");
  side_by_side(1600, 192, 768, rng);
  side_by_side(1600, 768, 192, rng);
  return 0;
}
