// test_core.cpp: C++ tests of the core that run without Node (CTest). Every GEMM ISA path and
// transpose combination against a float64 reference; the shared math against libm; autograd
// accumulation through fan-out; the thread pool.
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/parallel.h"
#include "cpu/gemm.h"
#include "cpu/math.h"
#include "ops/ops.h"

using namespace duat;

namespace {

int g_failed = 0, g_passed = 0;

void expect(bool ok, const std::string& what) {
  if (ok) {
    g_passed++;
  } else {
    g_failed++;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

// fp32 GEMM with K up to ~600 against fp64: relative error well under 1e-5 of the row scale.
constexpr double GEMM_TOL = 2e-5;

void test_gemm(CpuIsa isa) {
  cpu_isa_set(isa);
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  // The last two shapes take the split-K path and the several-chunks-of-packed-B path.
  const int64_t sizes[][3] = {{1, 1, 1}, {5, 7, 3}, {13, 33, 17}, {64, 64, 64}, {150, 70, 300}, {37, 129, 600}, {300, 5, 2}, {37, 50, 2000}, {20, 1100, 2100}};
  for (auto& s : sizes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++)
        for (float beta : {0.0f, 1.0f, 0.5f}) {
          const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
          std::vector<float> A((ta ? K : M) * lda), B((tb ? N : K) * ldb), C(M * ldc), C0;
          for (auto& v : A) v = dist(rng);
          for (auto& v : B) v = dist(rng);
          for (auto& v : C) v = dist(rng);
          C0 = C;
          sgemm(ta, tb, M, N, K, 0.75f, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
          double worst = 0.0;
          for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
              double ref = 0.0;
              for (int64_t k = 0; k < K; k++) {
                const double a = ta ? A[k * lda + i] : A[i * lda + k];
                const double b = tb ? B[j * ldb + k] : B[k * ldb + j];
                ref += a * b;
              }
              ref = 0.75 * ref + (beta == 0.0f ? 0.0 : beta * C0[i * ldc + j]);
              worst = std::max(worst, std::fabs(ref - C[i * ldc + j]) / std::sqrt(static_cast<double>(K) + 1));
            }
          // Padding columns of C must be untouched.
          bool pad_ok = true;
          for (int64_t i = 0; i < M; i++)
            for (int64_t j = N; j < ldc; j++) pad_ok = pad_ok && C[i * ldc + j] == C0[i * ldc + j];
          char name[160];
          std::snprintf(name, sizeof name, "sgemm %s M=%lld N=%lld K=%lld ta=%d tb=%d beta=%g (err %.3g)", cpu_isa_name(isa),
                        (long long)M, (long long)N, (long long)K, ta, tb, beta, worst);
          expect(worst < GEMM_TOL && pad_ok, name);
        }
  }
}

void test_math() {
  double worst_erf = 0.0, worst_exp = 0.0;
  for (float x = -6.0f; x <= 6.0f; x += 0.001f) worst_erf = std::max(worst_erf, std::fabs(fast_erf(x) - std::erf((double)x)));
  for (float x = -80.0f; x <= 80.0f; x += 0.01f)
    worst_exp = std::max(worst_exp, std::fabs(fast_exp(x) - std::exp((double)x)) / std::exp((double)x));
  expect(worst_erf < 4e-7, "fast_erf within 4e-7 of erf (got " + std::to_string(worst_erf) + ")");
  expect(worst_exp < 3e-7, "fast_exp within 3e-7 relative (got " + std::to_string(worst_exp) + ")");
  expect(std::isnan(fast_exp(NAN)) && std::isnan(fast_erf(NAN)), "NaN propagates through fast_exp and fast_erf");
  expect(fast_exp(-1000.0f) == 0.0f || fast_exp(-1000.0f) < 1e-37f, "fast_exp underflows to ~0");
  expect(std::isfinite(fast_exp(1000.0f)), "fast_exp saturates on large inputs");
}

void test_autograd_fanout() {
  // y = sum(x * x + x): dy/dx = 2x + 1, x used three times.
  Tensor x = full({3}, 2.0f);
  x->requires_grad = true;
  Tensor y = sum(add(mul(x, x), x), {}, false);
  backward(y, nullptr);
  bool ok = x->grad && x->grad->numel() == 3;
  for (int i = 0; ok && i < 3; i++) ok = std::fabs(x->grad->f32()[i] - 5.0f) < 1e-6f;
  expect(ok, "autograd accumulates through fan-out");
  bool threw = false;
  try {
    backward(y, nullptr);
  } catch (const Error& e) {
    threw = e.code() == ERROR_STATE;
  }
  expect(threw, "a second backward through a freed graph throws ERROR_STATE");
}

void test_pool() {
  std::vector<int> hits(1000, 0);
  parallel_for(1000, [&](int64_t i) { hits[i]++; });
  bool ok = true;
  for (int h : hits) ok = ok && h == 1;
  expect(ok, "parallel_for runs every task once");
  bool caught = false;
  try {
    parallel_for(8, [](int64_t i) {
      if (i == 5) fail(ERROR_ARGUMENT, "boom");
    });
  } catch (const Error&) {
    caught = true;
  }
  expect(caught, "an exception in a task reaches the caller");
}

void test_memory() {
  MemoryStats before = memory_stats();
  {
    Tensor a = randn({64, 64}, 1, 0.0f, 1.0f);
    a->requires_grad = true;
    Tensor l = sum(gelu(matmul(a, a)), {}, false);
    backward(l, nullptr);
  }
  MemoryStats after = memory_stats();
  expect(before.tensors == after.tensors && before.bytes == after.bytes, "no tensor outlives its last reference");
}

}  // namespace

int main() {
  for (int isa = 0; isa <= cpu_isa_best(); isa++) test_gemm(static_cast<CpuIsa>(isa));
  cpu_isa_set(cpu_isa_best());
  test_math();
  test_autograd_fanout();
  test_pool();
  test_memory();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
