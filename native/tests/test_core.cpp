// test_core.cpp: C++ tests of the core that run without Node (CTest). Every GEMM ISA path and
// transpose combination against a float64 reference; the shared math against libm; autograd
// accumulation through fan-out; the thread pool; and the per-element math and index arithmetic of
// the CUDA kernels (core/device_math.h), run here on the CPU against the CPU ops; distributed
// training's step against a stand-in job of two ranks holding the same values.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/autograd.h"
#include "core/strided.h"
#include "model/derived.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "cpu/cpu_backend.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "cpu/math_avx512.h"
#include "cpu/math.h"
#include "distributed/comm.h"
#include "core/device_math.h"
#include "ops/ops.h"
#include "train/optimizer.h"
#include "tests/parity.h"

using namespace duat;

namespace {

int g_failed = 0, g_passed = 0;

// What the checks being run have in common, said after a failure's name (" (one thread)").
std::string g_context;

void expect(bool ok, const std::string& what) {
  if (ok) {
    g_passed++;
  } else {
    g_failed++;
    std::printf("FAIL: %s%s\n", what.c_str(), g_context.c_str());
  }
}

// fn throws an Error with this code (any other outcome fails the check).
void expect_error(const std::function<void()>& fn, ErrorCode code, const std::string& what) {
  bool refused = false;
  try {
    fn();
  } catch (const Error& e) {
    refused = e.code() == code;
  }
  expect(refused, what + " is refused with its error code");
}

// GELU's derivative in double precision, the erf form: Phi(x) + x phi(x).
double gelu_grad_exact(double x) {
  return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))) + x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
}

// fp32 GEMM with K up to ~600 against fp64: relative error well under 1e-5 of the row scale.
constexpr double GEMM_TOL = 2e-5;

// bf16 products: equal, to fp32 summation error, to the exact products of the operands rounded to
// bf16 (nearest even), and measurably different from the fp32 product (the rounding happened).
double bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

// sgemm_micro_gflops runs the active kernel (every instruction set this CPU has) and reports a
// rate; how fast is the machine's business, not the test's.
void test_micro_gflops() {
  const CpuIsa saved = cpu_isa_active();
  for (int isa = 0; isa <= cpu_isa_best(); isa++) {
    cpu_isa_set(static_cast<CpuIsa>(isa));
    const double g = sgemm_micro_gflops(0.01);
    expect(std::isfinite(g) && g > 0.0, std::string("sgemm_micro_gflops with the ") + cpu_isa_name(static_cast<CpuIsa>(isa)) +
                                            " kernel: " + std::to_string(g) + " GFLOP/s");
  }
  cpu_isa_set(saved);
}

void test_gemm_bf16_products(const char* path);

void test_gemm_bf16() {
  if (!cpu_has_bf16()) {
    std::printf("skip bf16 products: this CPU has no AVX512_BF16\n");
    return;
  }
  const bool amx_was = cpu_amx_active();
  for (const bool amx : {false, true}) {
    if (amx && !cpu_has_amx()) {
      std::printf("skip AMX bf16 products: this CPU (or its OS) gives no AMX tiles\n");
      continue;
    }
    cpu_amx_set(amx);
    test_gemm_bf16_products(amx ? "AMX" : "vdpbf16ps");
  }
  cpu_amx_set(amx_was);
}

// Where the CPU (or its OS) gives no AMX tiles, turning them on is refused and leaves them off.
void test_amx_refused() {
  if (cpu_has_amx()) {
    std::printf("skip the refusal of AMX: this CPU has AMX tiles\n");
    return;
  }
  expect_error([] { cpu_amx_set(true); }, ERROR_ARGUMENT, "cpu_amx_set(true) without AMX tiles");
  expect(!cpu_amx_active(), "a refused cpu_amx_set(true) leaves AMX off");
}

// bf16 products against the products of the bf16-rounded operands summed in fp64: every layout,
// K not a multiple of 32 (AMX's tile depth), rows not a multiple of 16, a partial column panel.
void test_gemm_bf16_products(const char* path) {
  cpu_isa_set(CPU_ISA_AVX512);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const int64_t sizes[][3] = {{150, 70, 300}, {300, 200, 257}, {200, 64, 2100}, {97, 33, 5}, {130, 40, 64}, {150, 700, 33}};
  for (auto& s : sizes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        const int64_t lda = (ta ? M : K) + 1, ldb = (tb ? K : N) + 3, ldc = N + 1;
        std::vector<float> A((ta ? K : M) * lda), B((tb ? N : K) * ldb), C(M * ldc, 0.5f), bias(N);
        for (auto& v : A) v = dist(rng);
        for (auto& v : B) v = dist(rng);
        for (auto& v : bias) v = dist(rng);
        sgemm(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 1.0f, C.data(), ldc, true, bias.data(), true);
        double worst = 0.0, moved = 0.0;
        for (int64_t i = 0; i < M; i++)
          for (int64_t j = 0; j < N; j++) {
            double ref = 0.0, ref32 = 0.0;
            for (int64_t k = 0; k < K; k++) {
              const float a = ta ? A[k * lda + i] : A[i * lda + k], b = tb ? B[j * ldb + k] : B[k * ldb + j];
              ref += bf16_round(a) * bf16_round(b);
              ref32 += static_cast<double>(a) * b;
            }
            const double want = 0.5 + 0.5 * ref + bias[j], got = C[i * ldc + j];
            worst = std::max(worst, std::fabs(want - got) / std::sqrt(static_cast<double>(K) + 1));
            moved = std::max(moved, std::fabs(0.5 + 0.5 * ref32 + bias[j] - got));
          }
        char name[160];
        std::snprintf(name, sizeof name, "sgemm bf16 (%s) M=%lld N=%lld K=%lld ta=%d tb=%d (err %.3g, from fp32 %.3g)",
                      path, (long long)M, (long long)N, (long long)K, ta, tb, worst, moved);
        expect(worst < GEMM_TOL && (K < 64 || moved > 1e-4), name);
      }
  }
  cpu_isa_set(cpu_isa_best());
}

// Every layout (A or A^T, B or B^T) and beta of sgemm, or of sgemm_small (`small`), against a
// double-precision reference; C's padding columns must stay untouched. C's rows are ldc_min or
// N + 2 floats apart, whichever is more; A's lda_min or K + 3 (M + 3 when transposed).
void check_products(CpuIsa isa, bool small, const std::vector<std::array<int64_t, 3>>& sizes, int64_t ldc_min = 0,
                    int64_t lda_min = 0) {
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (auto& s : sizes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++)
        for (float beta : {0.0f, 1.0f, 0.5f}) {
          const int64_t lda = std::max((ta ? M : K) + 3, lda_min), ldb = (tb ? K : N) + 1, ldc = std::max(N + 2, ldc_min);
          std::vector<float> A((ta ? K : M) * lda), B((tb ? N : K) * ldb), C(M * ldc);
          for (auto& v : A) v = dist(rng);
          for (auto& v : B) v = dist(rng);
          for (auto& v : C) v = dist(rng);
          const std::vector<float> C0(C);
          if (small)
            sgemm_small(ta, tb, M, N, K, 0.75f, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
          else
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
          bool pad_ok = true;
          for (int64_t i = 0; i < M; i++)
            for (int64_t j = N; j < ldc; j++) pad_ok = pad_ok && C[i * ldc + j] == C0[i * ldc + j];
          char name[160];
          std::snprintf(name, sizeof name, "%s %s M=%lld N=%lld K=%lld ldc=%lld ta=%d tb=%d beta=%g (err %.3g)",
                        small ? "sgemm_small" : "sgemm", cpu_isa_name(isa), (long long)M, (long long)N, (long long)K,
                        (long long)ldc, ta, tb, beta, worst);
          expect(worst < GEMM_TOL && pad_ok, name);
        }
  }
}

void test_gemm(CpuIsa isa) {
  cpu_isa_set(isa);
  // The last two shapes take the split-K path and the several-chunks-of-packed-B path (and, A^T B,
  // the transposed product: fewer rows than half the columns, long K); with a row-major B, up to
  // 96 rows read B in place (a partial last panel packed), 97 pack it.
  check_products(isa, false, {{1, 1, 1}, {5, 7, 3}, {13, 33, 17}, {64, 64, 64}, {150, 70, 300}, {37, 129, 600},
                              {96, 70, 257}, {97, 64, 300}, {300, 5, 2}, {37, 50, 2000}, {20, 1100, 2100}});
  // Few rows read in place against a row-major B: every tile height from 1 to 12 (50 rows: five
  // tiles of 10).
  check_products(isa, false, {{1, 64, 2100}, {2, 64, 1100}, {3, 64, 700}, {4, 64, 600}, {5, 64, 500}, {6, 64, 400},
                              {7, 64, 300}, {8, 64, 300}, {9, 64, 300}, {10, 64, 300}, {11, 64, 300}, {50, 100, 192}});
  // C's rows 4 KiB apart: the packed path sums its tiles in a buffer first (partial tiles, several
  // K blocks).
  check_products(isa, false, {{150, 70, 300}, {37, 129, 600}, {100, 1000, 64}}, 1024);
  // A's rows 4 KiB apart: a row-major A that would be read in place (few column panels) is
  // packed; also with C's rows 4 KiB apart.
  check_products(isa, false, {{150, 70, 300}, {300, 192, 700}, {37, 129, 600}}, 0, 1024);
  check_products(isa, false, {{150, 70, 300}}, 1024, 1024);
  // The unpacked products: every remainder of the 6-row and 64-column tiles, transposes of
  // partial 16 x 16 blocks, attention's head shapes (50 tokens, 65 tokens; head width 64).
  check_products(isa, true, {{1, 1, 1}, {5, 7, 3}, {13, 33, 17}, {50, 50, 64}, {50, 64, 50}, {65, 64, 65},
                             {11, 130, 19}, {4, 200, 33}, {3, 17, 70}});
  // The block epilogue: every element of C in exactly one finished block, after all of K, on
  // every path (unpacked, split K, B read in place with and without split K, packed in one and in
  // several chunks of K, several column chunks, tiles summed in a buffer, the transposed A^T B).
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  // M, N, K, A transposed (stored K x M)
  const int64_t epi_sizes[][4] = {{5, 7, 3, 0},       {37, 50, 2000, 0},   {20, 100, 600, 0},  {50, 700, 192, 0},
                                  {150, 70, 300, 0},  {100, 1100, 2100, 0}, {100, 4200, 64, 0}, {150, 1024, 300, 0},
                                  {40, 1100, 1100, 1}};
  for (auto& sz : epi_sizes) {
    const int64_t M = sz[0], N = sz[1], K = sz[2];
    const bool ta = sz[3] != 0;
    std::vector<float> A(M * K), B(K * N), C(M * N), ref(M * N, 0.0f);
    for (auto& v : A) v = dist(rng);
    for (auto& v : B) v = dist(rng);
    for (int64_t i = 0; i < M; i++)
      for (int64_t k = 0; k < K; k++)
        for (int64_t j = 0; j < N; j++) ref[i * N + j] += (ta ? A[k * M + i] : A[i * K + k]) * B[k * N + j];
    std::vector<std::atomic<int>> seen(static_cast<size_t>(M * N));
    const GemmBlockFn block = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
      for (int64_t i = i0; i < i1; i++)
        for (int64_t j = j0; j < j1; j++) {
          seen[i * N + j]++;
          C[i * N + j] = 2.0f * C[i * N + j] + 1.0f;
        }
    };
    sgemm(ta, false, M, N, K, 1.0f, A.data(), ta ? M : K, B.data(), N, 0.0f, C.data(), N, true, nullptr, false, &block);
    double worst = 0.0;
    bool once = true;
    for (int64_t e = 0; e < M * N; e++) {
      worst = std::max(worst, std::fabs(C[e] - (2.0 * ref[e] + 1.0)) / std::sqrt(static_cast<double>(K)));
      once = once && seen[e] == 1;
    }
    char name[160];
    std::snprintf(name, sizeof name, "sgemm %s block epilogue M=%lld N=%lld K=%lld ta=%d: each element once, after all of K (err %.3g)",
                  cpu_isa_name(isa), (long long)M, (long long)N, (long long)K, ta ? 1 : 0, worst);
    expect(once && worst < 1e-3, name);
  }
  // The GELU output (act): gelu of the finished C, the same bits as the row kernel's, on every
  // path (registers on the packed tiles, plain and summed in a buffer, A packed and a transposed A
  // read in place; finished blocks elsewhere: unpacked, split K, B in place, the transposed A^T B,
  // A's rows read in place, bf16), before the epilogue sees its block; C keeps the product.
  // M, N, K, A transposed, C's row stride (0: N), bf16
  const int64_t act_sizes[][6] = {{5, 7, 3, 0, 0, 0},        {37, 50, 2000, 0, 0, 0},  {20, 100, 600, 0, 0, 0},
                                  {150, 70, 300, 0, 0, 0},    {100, 1100, 2100, 0, 0, 0}, {150, 1000, 300, 0, 1024, 0},
                                  {40, 1100, 1100, 1, 0, 0},  {300, 200, 300, 1, 0, 0}, {300, 200, 64, 0, 0, 0},
                                  {150, 700, 192, 0, 0, 1}};
  for (auto& sz : act_sizes) {
    const int64_t M = sz[0], N = sz[1], K = sz[2], ldc = sz[4] ? sz[4] : N, ld_act = N + 3;
    const bool ta = sz[3] != 0, bf16 = sz[5] != 0;
    std::vector<float> A(M * K), B(K * N), bias(N), C(M * ldc), act(M * ld_act, -7.0f), plain(M * ldc), want(N);
    for (auto& v : A) v = 3.0f * dist(rng);
    for (auto& v : B) v = dist(rng);
    for (auto& v : bias) v = dist(rng);
    sgemm(ta, false, M, N, K, 0.5f, A.data(), ta ? M : K, B.data(), N, 0.0f, plain.data(), ldc, true, bias.data(), bf16);
    std::atomic<bool> before{true};
    const GemmBlockFn block = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
      for (int64_t i = i0; i < i1; i++)
        for (int64_t j = j0; j < j1; j++) before = before && act[i * ld_act + j] != -7.0f;
    };
    const GemmAct out{act.data(), ld_act};
    sgemm(ta, false, M, N, K, 0.5f, A.data(), ta ? M : K, B.data(), N, 0.0f, C.data(), ldc, true, bias.data(), bf16,
          &block, &out);
    bool same = true;
    for (int64_t i = 0; i < M; i++) {
      gelu_forward_range_cpu(C.data() + i * ldc, want.data(), N);
      for (int64_t j = 0; j < N; j++)
        same = same && C[i * ldc + j] == plain[i * ldc + j] && act[i * ld_act + j] == want[j];
      for (int64_t j = N; j < ld_act; j++) same = same && act[i * ld_act + j] == -7.0f;  // nothing past N
    }
    char name[160];
    std::snprintf(name, sizeof name, "sgemm %s GELU output M=%lld N=%lld K=%lld ta=%d ldc=%lld bf16=%d: gelu(C) bit for bit, before the epilogue",
                  cpu_isa_name(isa), (long long)M, (long long)N, (long long)K, ta ? 1 : 0, (long long)ldc, bf16 ? 1 : 0);
    expect(same && before, name);
  }
  // A large pre-activation C with a GELU output, written once, is stored past the caches
  // (sgemm_streams_c) on the AVX-512 packed tiles: the same bits as the same product added onto a
  // zeroed C (cached stores), with C's rows aligned (64-byte base; N*4 a multiple of 64, or 4 KiB
  // rows: tiles summed in a buffer first), misaligned (a base 4 bytes off: plain stores), and a
  // partial last column panel (masked stores); bf16 too where the CPU has it.
  if (isa == CPU_ISA_AVX512) {
    // M, N, K, C's row stride (0: N), C's base offset in floats, bf16
    const int64_t stream_sizes[][6] = {{700, 800, 192, 0, 0, 0},  {700, 800, 192, 1024, 0, 0}, {700, 800, 192, 0, 1, 0},
                                       {700, 790, 100, 0, 0, 0},  {700, 800, 192, 0, 0, 1}};
    for (auto& sz : stream_sizes) {
      const int64_t M = sz[0], N = sz[1], K = sz[2], ldc = sz[3] ? sz[3] : N, off = sz[4];
      const bool bf16 = sz[5] != 0;
      if (bf16 && !cpu_has_bf16()) continue;
      std::vector<float> A(M * K), B(K * N), bias(N), act(M * N), act_ref(M * N);
      for (auto& v : A) v = dist(rng);
      for (auto& v : B) v = dist(rng);
      for (auto& v : bias) v = dist(rng);
      const size_t c_bytes = static_cast<size_t>(M * ldc + 16) * 4;
      float* c_mem = static_cast<float*>(std::aligned_alloc(64, (c_bytes + 63) / 64 * 64));
      std::vector<float> ref(static_cast<size_t>(M * ldc + 16), 0.0f);
      std::fill(c_mem, c_mem + M * ldc + 16, -7.0f);
      const GemmAct out{act.data(), N}, out_ref{act_ref.data(), N};
      sgemm(false, false, M, N, K, 0.5f, A.data(), K, B.data(), N, 0.0f, c_mem + off, ldc, true, bias.data(), bf16,
            nullptr, &out);
      sgemm(false, false, M, N, K, 0.5f, A.data(), K, B.data(), N, 1.0f, ref.data() + off, ldc, true, bias.data(), bf16,
            nullptr, &out_ref);
      bool same = act == act_ref;
      for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) same = same && c_mem[off + i * ldc + j] == ref[off + i * ldc + j];
      std::free(c_mem);
      char name[200];
      std::snprintf(name, sizeof name,
                    "sgemm avx512 GELU product M=%lld N=%lld K=%lld ldc=%lld offset=%lld bf16=%d: C streamed past the "
                    "caches (%d), the cached stores' bits",
                    (long long)M, (long long)N, (long long)K, (long long)ldc, (long long)off, bf16 ? 1 : 0,
                    sgemm_streams_c(M, N, K, 0.0f) ? 1 : 0);
      expect(same && sgemm_streams_c(M, N, K, 0.0f) && !sgemm_streams_c(M, N, K, 1.0f), name);
    }
  }
}

// The vectorised AdamW update equals the scalar formula (dm::adamw_element) bit for bit on every
// instruction set: no FMA contraction changes an update.
void test_adamw_kernel() {
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int64_t n = 1000;
  std::vector<float> p0(n), g(n), m0(n), v0(n);
  for (int64_t i = 0; i < n; i++) {
    p0[i] = dist(rng), g[i] = dist(rng) * 1e-3f, m0[i] = dist(rng) * 1e-3f, v0[i] = std::fabs(dist(rng)) * 1e-6f;
  }
  const AdamWConsts c{0.9f, 0.1f, 0.999f, 0.001f, 1e-8f, 0.9995f, 1.3e-3f, 1.7f};
  std::vector<float> pr = p0, mr = m0, vr = v0;
  for (int64_t i = 0; i < n; i++)
    pr[i] = dm::adamw_element(pr[i], g[i] * 0.75f, &mr[i], &vr[i], c.beta1, c.one_minus_beta1, c.beta2, c.one_minus_beta2,
                              c.eps, c.decay, c.step_size, c.inv_sqrt_bc2);
  const CpuIsa saved = cpu_isa_active();
  for (int isa = 0; isa <= cpu_isa_best(); isa++) {
    cpu_isa_set(static_cast<CpuIsa>(isa));
    std::vector<float> p = p0, m = m0, v = v0;
    adamw_range_cpu(p.data(), g.data(), m.data(), v.data(), n, 0.75f, c);
    expect(p == pr && m == mr && v == vr,
           std::string("adamw_range ") + cpu_isa_name(static_cast<CpuIsa>(isa)) + ": the scalar formula's update, bit for bit");
  }
  cpu_isa_set(saved);
}

// Attention's column kernels (probabilities kept keys x queries) on every instruction set
// against double formulas: softmax and log-sum-exp per column, and
// the softmax backward per column; widths that fill 16-column blocks fully, partly and not at all.
// The AVX-512 loops, written with math_avx512.h, give AVX2's bits (the same formulas, contracted
// the same way) in GCC's optimised builds.
void test_column_softmax_kernels() {
  const CpuIsa saved = cpu_isa_active();
  std::map<int64_t, std::vector<float>> avx2_out;  // columns -> p and lse as AVX2 gave them
  for (int isa = 0; isa <= cpu_isa_best(); isa++) {
    cpu_isa_set(static_cast<CpuIsa>(isa));
    std::mt19937 rng(12);  // the same inputs on every instruction set
    std::normal_distribution<float> dist(0.0f, 2.0f);
    for (const int64_t cols : {1, 16, 17, 50}) {
      const int64_t rows = 23, ld = (cols + 15) / 16 * 16;
      std::vector<float> s0(rows * ld), d0(rows * ld);
      for (auto& v : s0) v = dist(rng);
      for (auto& v : d0) v = dist(rng);
      std::vector<float> p = s0, lse(cols + 1, 7.0f), d = d0;
      softmax_lse_cols_cpu(p.data(), ld, rows, cols, lse.data());
      {  // the columns' maxima given (not looked for), then also left unnormalised: the same bits
        std::vector<float> max(cols, -INFINITY), inv(cols + 1, 7.0f);
        for (int64_t i = 0; i < rows; i++)
          for (int64_t j = 0; j < cols; j++) max[j] = std::max(max[j], s0[i * ld + j]);
        std::vector<float> pm = s0, lm(cols + 1, 7.0f), pu = s0, lu(cols + 1, 7.0f);
        softmax_lse_cols_cpu(pm.data(), ld, rows, cols, lm.data(), max.data());
        softmax_lse_cols_cpu(pu.data(), ld, rows, cols, lu.data(), max.data(), inv.data());
        bool same = lm == lse && lu == lse && inv[cols] == 7.0f;
        for (int64_t i = 0; i < rows; i++)
          for (int64_t j = 0; j < cols; j++)
            same = same && pm[i * ld + j] == p[i * ld + j] && pu[i * ld + j] * inv[j] == p[i * ld + j];
        expect(same, std::string("softmax_lse_cols ") + cpu_isa_name(static_cast<CpuIsa>(isa)) + ", " +
                         std::to_string(cols) + " columns, maxima given, unnormalised with 1 / sum: the same bits");
      }
      std::vector<float> out;
      for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) out.push_back(p[i * ld + j]);
      out.insert(out.end(), lse.begin(), lse.end());
      if (isa == CPU_ISA_AVX2) avx2_out[cols] = out;
#if defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)  // as test_math_avx512
      if (isa == CPU_ISA_AVX512)
        expect(std::memcmp(out.data(), avx2_out[cols].data(), out.size() * sizeof(float)) == 0,
               "softmax_lse_cols, AVX-512, " + std::to_string(cols) + " columns: AVX2's bits");
#endif
      softmax_backward_cols_cpu(p.data(), d.data(), ld, rows, cols);
      double worst_p = 0, worst_lse = 0, worst_d = 0;
      for (int64_t j = 0; j < cols; j++) {
        double m = -INFINITY, sum = 0, dot = 0;
        for (int64_t i = 0; i < rows; i++) m = std::max(m, double(s0[i * ld + j]));
        for (int64_t i = 0; i < rows; i++) sum += std::exp(s0[i * ld + j] - m);
        for (int64_t i = 0; i < rows; i++) dot += std::exp(s0[i * ld + j] - m) / sum * d0[i * ld + j];
        worst_lse = std::max(worst_lse, std::fabs(m + std::log(sum) - lse[j]));
        for (int64_t i = 0; i < rows; i++) {
          const double pr = std::exp(s0[i * ld + j] - m) / sum;
          worst_p = std::max(worst_p, std::fabs(pr - p[i * ld + j]));
          worst_d = std::max(worst_d, std::fabs(pr * (d0[i * ld + j] - dot) - d[i * ld + j]));
        }
      }
      const std::string where = std::string(cpu_isa_name(static_cast<CpuIsa>(isa))) + ", " + std::to_string(cols) + " columns";
      expect(worst_p < 1e-6 && worst_lse < 1e-5 && lse[cols] == 7.0f,
             "softmax_lse_cols " + where + ": probabilities and log-sum-exp per column, nothing past the last (" +
                 std::to_string(worst_p) + ", " + std::to_string(worst_lse) + ")");
      expect(worst_d < 1e-5, "softmax_backward_cols " + where + " (" + std::to_string(worst_d) + ")");
    }
  }
  cpu_isa_set(saved);
}

// sgemm_small_then on every instruction set against sgemm_small followed by each step written out
// (the AVX-512 tiles do the step as they store): attention's shapes (50 keys x 50 queries over
// 64, 50 x 64 over 50 keys read transposed) and odd ones; nothing written past the N columns of C
// or of the column maxima.
void test_small_then() {
  const CpuIsa saved = cpu_isa_active();
  std::mt19937 rng(31);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  struct Case {
    bool ta, tb;
    int64_t M, N, K;
  };
  // transB with 1-4 columns past a multiple of 16 (and K >= 16): those columns as dot products.
  const Case cases[] = {{false, true, 50, 50, 64}, {true, false, 50, 64, 50}, {false, false, 17, 33, 5},
                        {true, true, 7, 20, 3},    {false, false, 1, 1, 1},   {false, true, 13, 70, 9},
                        {false, true, 37, 35, 23}, {false, true, 50, 20, 64}, {false, true, 16, 17, 16}};
  for (int isa = 0; isa <= cpu_isa_best(); isa++) {
    cpu_isa_set(static_cast<CpuIsa>(isa));
    for (const Case& c : cases) {
      const int64_t lda = (c.ta ? c.M : c.K) + 3, ldb = (c.tb ? c.K : c.N) + 2, ldc = (c.N + 15) / 16 * 16 + 16;
      std::vector<float> A((c.ta ? c.K : c.M) * lda), B((c.tb ? c.N : c.K) * ldb), col(c.N + 1), row(c.M);
      for (auto& v : A) v = dist(rng);
      for (auto& v : B) v = dist(rng);
      for (auto& v : col) v = dist(rng);
      for (auto& v : row) v = dist(rng);
      std::vector<float> ref(c.M * ldc, 9.0f);
      sgemm_small(c.ta, c.tb, c.M, c.N, c.K, 0.5f, A.data(), lda, B.data(), ldb, 0.0f, ref.data(), ldc);
      for (const SmallThen then : {SmallThen::col_max, SmallThen::exp_shift, SmallThen::row_scale}) {
        std::vector<float> C(c.M * ldc, 9.0f), max = col;  // max: a column's running maximum so far
        max[c.N] = 9.0f;
        SmallThenArgs args;
        args.max = max.data();
        args.col = col.data();
        args.row = row.data();
        sgemm_small_then(then, c.ta, c.tb, c.M, c.N, c.K, 0.5f, A.data(), lda, B.data(), ldb, C.data(), ldc, args);
        double worst = 0.0;
        bool pad_ok = max[c.N] == 9.0f;
        std::vector<float> want_max = col;
        for (int64_t i = 0; i < c.M; i++)
          for (int64_t j = 0; j < ldc; j++) {
            const float r = ref[i * ldc + j], got = C[i * ldc + j];
            if (j >= c.N) {
              pad_ok = pad_ok && got == 9.0f;
              continue;
            }
            double want = r;
            if (then == SmallThen::col_max) want_max[j] = std::max(want_max[j], r);
            if (then == SmallThen::exp_shift) want = std::exp(static_cast<double>(r) - col[j]);
            if (then == SmallThen::row_scale) want = r * row[i];  // one float product, rounded
            worst = std::max(worst, std::fabs(want - got) / std::max(1.0, std::fabs(want)));
          }
        if (then == SmallThen::col_max)
          for (int64_t j = 0; j < c.N; j++) worst = std::max(worst, double(std::fabs(want_max[j] - max[j])));
        char name[160];
        std::snprintf(name, sizeof name, "sgemm_small_then %s %s M=%lld N=%lld K=%lld ta=%d tb=%d (err %.3g)",
                      then == SmallThen::col_max ? "col_max" : then == SmallThen::exp_shift ? "exp_shift" : "row_scale",
                      cpu_isa_name(static_cast<CpuIsa>(isa)), (long long)c.M, (long long)c.N, (long long)c.K, c.ta,
                      c.tb, worst);
        // The product and the maxima as sgemm_small's exactly; exp within fast_exp's error.
        expect(pad_ok && worst <= (then == SmallThen::exp_shift ? 2e-6 : 0.0), name);
      }
    }
  }
  cpu_isa_set(saved);
}

// The attention backward with the QKV bias's gradient (CPU: summed from each head in cache)
// against the backward alone and double column sums of its dqkv: dqkv the same bits, db near the
// sums and the same bits on 1, 2 and 3 threads; the backend's default (backward, then reduction)
// near them too. Layouts of one and several branches, heads of 64 and of 8.
void test_attention_bias_sums() {
  const int saved_threads = get_num_threads();
  for (auto [B, T, N, H, D] : {std::array<int64_t, 5>{5, 50, 1, 3, 64}, {3, 7, 2, 2, 8}, {9, 19, 3, 1, 16}}) {
    const int64_t C = H * D, W = N * 3 * C;
    const dm::AttnLayout L{T, C, N, H, D};
    const Tensor qkv = randn({B, T, W}, 21, 0.0f, 1.0f), dout = randn({B, T, N * C}, 22, 0.0f, 1.0f);
    std::vector<float> out(B * T * N * C), lse(B * N * H * T), delta(B * N * H * T), dq0(B * T * W);
    cpu_backend().attention_forward(L, B, qkv->f32(), out.data(), lse.data());
    cpu_backend().attention_backward(L, B, dout->f32(), qkv->f32(), out.data(), lse.data(), delta.data(), dq0.data());
    std::vector<double> want(W, 0.0);
    for (int64_t r = 0; r < B * T; r++)
      for (int64_t j = 0; j < W; j++) want[j] += dq0[r * W + j];
    std::vector<float> first;
    const std::string shape = "B=" + std::to_string(B) + " T=" + std::to_string(T) + " N=" + std::to_string(N) +
                              " H=" + std::to_string(H) + " D=" + std::to_string(D);
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      std::vector<float> dq(B * T * W, 9.0f), db(W, 9.0f);
      cpu_backend().attention_backward_bias(L, B, dout->f32(), qkv->f32(), out.data(), lse.data(), delta.data(),
                                            dq.data(), db.data());
      double worst = 0.0;
      for (int64_t j = 0; j < W; j++) worst = std::max(worst, std::fabs(db[j] - want[j]) / std::max(1.0, std::fabs(want[j])));
      if (threads == 1) first = db;
      expect(dq == dq0 && db == first && worst < 1e-6,
             "attention_backward_bias " + shape + " on " + std::to_string(threads) +
                 " threads: dqkv as the backward's, db its column sums (" + std::to_string(worst) + ")");
    }
    std::vector<float> dq(B * T * W), db(W, 9.0f);
    cpu_backend().Backend::attention_backward_bias(L, B, dout->f32(), qkv->f32(), out.data(), lse.data(), delta.data(),
                                                   dq.data(), db.data());
    double worst = 0.0;
    for (int64_t j = 0; j < W; j++) worst = std::max(worst, std::fabs(db[j] - want[j]) / std::max(1.0, std::fabs(want[j])));
    expect(dq == dq0 && worst < 1e-6, "Backend::attention_backward_bias (the default) " + shape + " (" +
                                          std::to_string(worst) + ")");
  }
  set_num_threads(saved_threads);
}

// The stage epilogue's row kernel on every instruction set against double formulas: no branch,
// one, four; with and without beta; 300 columns (a block of 256 and a partial one); c written
// over v as the GEMM epilogue does.
void test_stage_combine_kernel() {
  const CpuIsa saved = cpu_isa_active();
  const int64_t n = 300, stride = 311;
  std::mt19937 rng(15);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n), r(n), c0(n), extra(4 * stride);
  for (auto* a : {&v, &r, &c0, &extra})
    for (auto& x : *a) x = dist(rng);
  for (int isa = 0; isa <= cpu_isa_best(); isa++) {
    cpu_isa_set(static_cast<CpuIsa>(isa));
    for (const int64_t nsum : {0, 1, 4})
      for (const float beta : {0.0f, 0.5f}) {
        std::vector<float> c = c0, vc = v;
        stage_combine_range_cpu(c.data(), v.data(), r.data(), extra.data(), nsum, stride, 0.25f, beta, n);
        if (beta == 0.0f) stage_combine_range_cpu(vc.data(), vc.data(), r.data(), extra.data(), nsum, stride, 0.25f, 0.0f, n);
        double worst = 0;
        for (int64_t i = 0; i < n; i++) {
          double sum = 0;
          for (int64_t j = 0; j < nsum; j++) sum += extra[j * stride + i];
          const double want = r[i] + 0.25 * (double(v[i]) + sum) + beta * double(c0[i]);
          worst = std::max(worst, std::fabs(c[i] - want));
          if (beta == 0.0f) worst = std::max(worst, std::fabs(vc[i] - want));
        }
        expect(worst < 1e-5, std::string("stage_combine_range ") + cpu_isa_name(static_cast<CpuIsa>(isa)) + ", " +
                                 std::to_string(nsum) + " branches, beta " + std::to_string(beta) + " (" +
                                 std::to_string(worst) + ")");
      }
  }
  cpu_isa_set(saved);
}

// LayerNorm's forward row kernels on every instruction set: layernorm_rows_cpu (strided rows, in
// place or not, with and without the affine) gives each row the bits layernorm_row_cpu makes of
// it, and both agree with double formulas (mean, rstd and y); widths with and without a masked
// tail and with several vector steps, and a large mean (the variance is taken about the mean,
// not from the squares' sum).
void test_layernorm_rows_kernel() {
  const CpuIsa saved = cpu_isa_active();
  std::mt19937 rng(15);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int isa = 0; isa <= cpu_isa_best(); isa++) {
    cpu_isa_set(static_cast<CpuIsa>(isa));
    for (const int64_t C : {1, 7, 16, 33, 64, 192, 200, 768}) {
      for (const int64_t rows : {1, 4, 11}) {
        for (const bool affine : {false, true}) {
          const int64_t ld = C + 5;
          std::vector<float> x(rows * ld), w(C), b(C);
          for (auto& v : x) v = dist(rng);
          for (int64_t c = 0; c < C; c++) x[c] += 300.0f;  // the first row's mean far from 0
          for (auto& v : w) v = 1.0f + 0.1f * dist(rng);
          for (auto& v : b) v = 0.1f * dist(rng);
          const float* pw = affine ? w.data() : nullptr;
          const float* pb = affine ? b.data() : nullptr;
          std::vector<float> y(rows * C), mean(rows), rstd(rows), y1(rows * C), mean1(rows), rstd1(rows);
          layernorm_rows_cpu(x.data(), ld, pw, pb, y.data(), C, mean.data(), rstd.data(), rows, C, 1e-5f);
          for (int64_t r = 0; r < rows; r++)
            layernorm_row_cpu(x.data() + r * ld, pw, pb, y1.data() + r * C, &mean1[r], &rstd1[r], C, 1e-5f);
          std::vector<float> in_place(x);
          std::vector<float> mean2(rows), rstd2(rows);
          layernorm_rows_cpu(in_place.data(), ld, pw, pb, in_place.data(), ld, mean2.data(), rstd2.data(), rows, C, 1e-5f);
          bool same_in_place = mean2 == mean && rstd2 == rstd;
          // Errors over their bounds: float sums of C terms are off by up to C roundings of the
          // terms' sizes (the mean's error, |m| times that, carries into every y).
          double worst = 0;
          for (int64_t r = 0; r < rows; r++) {
            double m = 0, v = 0, size = 0;
            for (int64_t c = 0; c < C; c++) m += x[r * ld + c], size += std::fabs(x[r * ld + c]);
            m /= C;
            for (int64_t c = 0; c < C; c++) v += (x[r * ld + c] - m) * (x[r * ld + c] - m);
            const double rs = 1.0 / std::sqrt(v / C + 1e-5);
            const double mean_bound = 1e-6 + C * 6e-8 * size / C, rstd_bound = 2e-5 + C * 1.2e-7;
            worst = std::max(worst, std::fabs(mean[r] - m) / mean_bound);
            worst = std::max(worst, std::fabs(rstd[r] - rs) / rs / rstd_bound);
            for (int64_t c = 0; c < C; c++) {
              const double scale = affine ? std::fabs(w[c]) : 1.0;
              const double want = (x[r * ld + c] - m) * rs * (affine ? w[c] : 1.0) + (affine ? b[c] : 0.0);
              const double bound = 2e-6 + scale * rs * (mean_bound + std::fabs(x[r * ld + c] - m) * rstd_bound);
              worst = std::max(worst, std::fabs(y[r * C + c] - want) / bound);
              same_in_place = same_in_place && in_place[r * ld + c] == y[r * C + c];
            }
          }
          const std::string name = std::string("layernorm_rows ") + cpu_isa_name(static_cast<CpuIsa>(isa)) + ", " +
                                   std::to_string(rows) + " rows of " + std::to_string(C) + (affine ? ", affine" : "");
          expect(y == y1 && mean == mean1 && rstd == rstd1, name + ": each row the bits of layernorm_row");
          expect(same_in_place, name + ": in place, the same bits");
          expect(worst <= 1, name + ": against double formulas (worst error over its bound " + std::to_string(worst) + ")");
          // With a residual of 3 rows (ld + 2 apart), starting at its row 2: row r gets residual
          // row (2 + r) % 3, and the bits layernorm_row makes of the float sum.
          const int64_t rld = C + 2;
          std::vector<float> res(3 * rld);
          for (auto& v : res) v = dist(rng);
          const ResidualRows resid{res.data(), rld, 3, 2};
          std::vector<float> yr(rows * C), meanr(rows), rstdr(rows), sum(C), want(C);
          layernorm_rows_cpu(x.data(), ld, pw, pb, yr.data(), C, meanr.data(), rstdr.data(), rows, C, 1e-5f, &resid);
          bool same_resid = true;
          for (int64_t r = 0; r < rows; r++) {
            for (int64_t c = 0; c < C; c++) sum[c] = x[r * ld + c] + res[((2 + r) % 3) * rld + c];
            float m, s;
            layernorm_row_cpu(sum.data(), pw, pb, want.data(), &m, &s, C, 1e-5f);
            same_resid = same_resid && m == meanr[r] && s == rstdr[r] &&
                         std::equal(want.begin(), want.end(), yr.begin() + r * C);
          }
          expect(same_resid, name + ": with a residual, layernorm_row's bits of x + resid");
        }
      }
    }
  }
  cpu_isa_set(saved);
}

// LayerNorm's backward kernel on every instruction set and on 1 and 2 threads: dx and the
// parameter sums (added into dw and db, either of which may be absent) against double formulas;
// 1000 rows (two threads' halves of 500: groups of 16 and a partial one) of 70 columns (two
// register blocks of 32 and a tail). The sums' bound is float accumulation's worst case over 510
// adds (a half's rows), relative to the sum of the terms' sizes; the one-thread run's 1000 adds
// of these fixed inputs stay within it too (typical error grows as the square root).
void test_layernorm_backward_kernel() {
  const CpuIsa saved = cpu_isa_active();
  const int saved_threads = get_num_threads();
  const int64_t rows = 1000, C = 70;
  std::mt19937 rng(14);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(rows * C), dy(rows * C), w(C), mean(rows), rstd(rows);
  for (auto& v : x) v = dist(rng);
  for (auto& v : dy) v = dist(rng);
  for (auto& v : w) v = 1.0f + 0.1f * dist(rng);
  for (int64_t r = 0; r < rows; r++) mean[r] = 0.1f * dist(rng), rstd[r] = 0.8f + 0.05f * dist(rng);
  std::vector<double> rdw(C, 0.5), rdb(C, -0.25), rdx(rows * C), size_w(C, 0.5), size_b(C, 0.25);
  for (int64_t r = 0; r < rows; r++) {
    double sg = 0, sgx = 0;
    for (int64_t c = 0; c < C; c++) {
      const double xh = (double(x[r * C + c]) - mean[r]) * rstd[r], g = double(dy[r * C + c]) * w[c];
      sg += g, sgx += g * xh;
      rdw[c] += double(dy[r * C + c]) * xh, size_w[c] += std::fabs(double(dy[r * C + c]) * xh);
      rdb[c] += dy[r * C + c], size_b[c] += std::fabs(dy[r * C + c]);
    }
    for (int64_t c = 0; c < C; c++) {
      const double xh = (double(x[r * C + c]) - mean[r]) * rstd[r], g = double(dy[r * C + c]) * w[c];
      rdx[r * C + c] = rstd[r] * (g - sg / C - xh * sgx / C);
    }
  }
  const double bound = 510 * 6e-8;  // a half's adds (and the halves' sum) times float's rounding
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (int isa = 0; isa <= cpu_isa_best(); isa++) {
      cpu_isa_set(static_cast<CpuIsa>(isa));
      for (int which = 0; which < 3; which++) {  // both sums, dw only, db only
        std::vector<float> dx(rows * C), dw(C, 0.5f), db(C, -0.25f);
        layernorm_backward_cpu(x.data(), w.data(), mean.data(), rstd.data(), dy.data(), dx.data(),
                               which != 2 ? dw.data() : nullptr, which != 1 ? db.data() : nullptr, rows, C, false);
        double worst_x = 0, worst_w = 0, worst_b = 0;  // dx absolute; the sums over their bounds
        for (int64_t i = 0; i < rows * C; i++) worst_x = std::max(worst_x, std::fabs(dx[i] - rdx[i]));
        for (int64_t c = 0; c < C; c++) {
          worst_w = std::max(worst_w, std::fabs(dw[c] - (which != 2 ? rdw[c] : 0.5)) / (bound * size_w[c]));
          worst_b = std::max(worst_b, std::fabs(db[c] - (which != 1 ? rdb[c] : -0.25)) / (bound * size_b[c]));
        }
        expect(worst_x < 1e-5 && worst_w <= 1 && worst_b <= 1,
               std::string("layernorm_backward ") + cpu_isa_name(static_cast<CpuIsa>(isa)) + ", " +
                   std::to_string(threads) + " threads, case " + std::to_string(which) + " (dx " +
                   std::to_string(worst_x) + ", dw and db over their bounds " + std::to_string(worst_w) + ", " +
                   std::to_string(worst_b) + ")");
      }
    }
  }
  cpu_isa_set(saved);
  set_num_threads(saved_threads);
}

// LayerNorm of x + a residual shared by row sets, backward through the CPU backend on every
// instruction set and on 1 and 2 threads: dx added to what it held, and the residual's gradient
// (dx summed over the sets) written or added, against double formulas. 3 sets of 37 residual rows
// (blocks of 16 and a partial one) of 70 columns (vector blocks and a tail).
void test_layernorm_residual_backward() {
  const CpuIsa saved = cpu_isa_active();
  const int saved_threads = get_num_threads();
  const int64_t R = 37, sets = 3, rows = R * sets, C = 70;
  std::mt19937 rng(15);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(rows * C), res(R * C), dy(rows * C), mean(rows), rstd(rows), dx0(rows * C), dr0(R * C);
  for (auto* v : {&x, &res, &dy, &dx0, &dr0})
    for (auto& e : *v) e = dist(rng);
  for (int64_t r = 0; r < rows; r++) mean[r] = 0.1f * dist(rng), rstd[r] = 0.8f + 0.05f * dist(rng);
  std::vector<double> rdx(rows * C), rdr(R * C, 0.0);
  for (int64_t r = 0; r < rows; r++) {
    double sg = 0, sgx = 0;
    auto xhat = [&](int64_t c) { return (double(x[r * C + c] + res[(r % R) * C + c]) - mean[r]) * rstd[r]; };
    for (int64_t c = 0; c < C; c++) sg += dy[r * C + c], sgx += dy[r * C + c] * xhat(c);
    for (int64_t c = 0; c < C; c++) {
      rdx[r * C + c] = rstd[r] * (dy[r * C + c] - sg / C - xhat(c) * sgx / C);
      rdr[(r % R) * C + c] += rdx[r * C + c];
    }
  }
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (int isa = 0; isa <= cpu_isa_best(); isa++) {
      cpu_isa_set(static_cast<CpuIsa>(isa));
      std::vector<float> written_dx;
      for (int which : {1, 0, 2}) {  // dx and the residual's written; added; the residual's only
        std::vector<float> dx = dx0, dr = dr0;
        LayerNormGradArgs a;
        a.dy = dy.data(), a.x = x.data(), a.resid = res.data(), a.resid_rows = R, a.mean = mean.data();
        a.rstd = rstd.data(), a.rows = rows, a.C = C;
        a.dx = which == 2 ? nullptr : dx.data(), a.dresid = dr.data();
        a.accumulate = a.resid_accumulate = which == 0;
        cpu_backend().layernorm_backward(a);
        double worst_x = 0, worst_r = 0;
        for (int64_t i = 0; i < rows * C; i++)
          worst_x = std::max(worst_x, std::fabs(dx[i] - (which == 2 ? dx0[i] : rdx[i] + (which == 0 ? dx0[i] : 0.0))));
        for (int64_t i = 0; i < R * C; i++)
          worst_r = std::max(worst_r, std::fabs(dr[i] - (rdr[i] + (which == 0 ? dr0[i] : 0.0))));
        expect(worst_x < 1e-5 && worst_r < 1e-5,
               std::string("layernorm_backward with a residual ") + cpu_isa_name(static_cast<CpuIsa>(isa)) + ", " +
                   std::to_string(threads) + " threads, case " + std::to_string(which) + " (dx " +
                   std::to_string(worst_x) + ", residual " + std::to_string(worst_r) + ")");
        // The residual's gradient is the rows' dx (as the written case gives them) summed over the
        // sets in fp64 and rounded once, as reduce sums (float sums differ in the last bits).
        if (which == 1) written_dx = dx;
        bool same = true;
        for (int64_t i = 0; i < R * C; i++) {
          double sum = 0.0;
          for (int64_t s = 0; s < sets; s++) sum += written_dx[s * R * C + i];
          const float v = static_cast<float>(sum);
          same = same && dr[i] == (which == 0 ? dr0[i] + v : v);
        }
        expect(same, std::string("layernorm_backward with a residual ") + cpu_isa_name(static_cast<CpuIsa>(isa)) +
                         ", " + std::to_string(threads) + " threads, case " + std::to_string(which) +
                         ": the residual's sums in fp64, rounded once, bit for bit");
      }
    }
  }
  cpu_isa_set(saved);
  set_num_threads(saved_threads);
}

// The register-blocked row sums equal the row-by-row fp64 sums bit for bit on every instruction
// set (rows 3 floats wider than the 70 columns summed: a full block of 32, a partial one, a tail).
void test_accumulate_rows() {
  std::mt19937 rng(13);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int64_t rows = 37, n = 70, ld = 73;
  std::vector<float> x(rows * ld);
  for (auto& v : x) v = dist(rng);
  const CpuIsa saved = cpu_isa_active();
  for (int isa = 0; isa <= cpu_isa_best(); isa++) {
    cpu_isa_set(static_cast<CpuIsa>(isa));
    std::vector<double> by_row(n, 0.5), blocked(n, 0.5);
    for (int64_t r = 0; r < rows; r++) accumulate_f64_cpu(x.data() + r * ld, by_row.data(), n);
    accumulate_rows_f64_cpu(x.data(), ld, rows, blocked.data(), n);
    expect(blocked == by_row, std::string("accumulate_rows_f64 ") + cpu_isa_name(static_cast<CpuIsa>(isa)) +
                                  ": the row-by-row sums, bit for bit");
  }
  cpu_isa_set(saved);
}

// The LayerNorm-affine fold's row kernels on every instruction set against double formulas.
void test_fold_affine_rows() {
  std::mt19937 rng(14);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int64_t C = 45;
  std::vector<float> w(C), g(C), beta(C), d(C), wf(C), dw(C), dg(C), dbeta(C);
  for (auto* v : {&w, &g, &beta, &d, &dg, &dbeta})
    for (auto& e : *v) e = dist(rng);
  const float db = 0.7f;
  const CpuIsa saved = cpu_isa_active();
  for (int isa = 0; isa <= cpu_isa_best(); isa++) {
    cpu_isa_set(static_cast<CpuIsa>(isa));
    std::vector<float> dg1 = dg, dbeta1 = dbeta;
    const float dot = fold_affine_row_cpu(w.data(), g.data(), beta.data(), wf.data(), C);
    fold_affine_backward_row_cpu(d.data(), w.data(), g.data(), beta.data(), db, dw.data(), dg1.data(), dbeta1.data(), C);
    double ref_dot = 0, worst = 0;
    for (int64_t c = 0; c < C; c++) {
      ref_dot += double(w[c]) * beta[c];
      worst = std::max({worst, std::fabs(double(w[c]) * g[c] - wf[c]), std::fabs(double(d[c]) * g[c] + db * double(beta[c]) - dw[c]),
                        std::fabs(dg[c] + double(d[c]) * w[c] - dg1[c]), std::fabs(dbeta[c] + db * double(w[c]) - dbeta1[c])});
    }
    worst = std::max(worst, std::fabs(ref_dot - dot));
    expect(worst < 1e-5, std::string("fold_affine rows ") + cpu_isa_name(static_cast<CpuIsa>(isa)) + " (" + std::to_string(worst) + ")");
  }
  cpu_isa_set(saved);
}

// The fold's backward over whole branches (one branch, a ViT block, as well as several, each a
// task of the threads): every output equals the row kernel run row by row over each branch, bit
// for bit, on one thread and on several.
// The fold's backward against the row kernel (dw, db: its bits) and double sums (dg, dbeta, summed
// over the rows in parts), the same bits on 1, 2 and 3 threads; rows cut into parts and not.
void test_fold_affine_backward() {
  std::mt19937 rng(15);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int saved_threads = get_num_threads();
  for (auto [N, O, C] : {std::array<int64_t, 3>{1, 7, 70}, {3, 5, 45}, {2, 4, 192}, {1, 3, 8}, {1, 300, 33}, {2, 768, 20}}) {
    std::vector<float> w(N * O * C), dwf(N * O * C), g(N * C), beta(N * C), dbf(N * O);
    for (auto* v : {&w, &dwf, &g, &beta, &dbf})
      for (auto& e : *v) e = dist(rng);
    std::vector<float> rdw(N * O * C), scratch_g(C), scratch_b(C);
    std::vector<double> rdg(N * C, 0.0), rdbeta(N * C, 0.0);
    for (int64_t n = 0; n < N; n++)
      for (int64_t o = 0; o < O; o++) {
        const int64_t row = n * O + o;
        fold_affine_backward_row_cpu(dwf.data() + row * C, w.data() + row * C, g.data() + n * C, beta.data() + n * C,
                                     dbf[row], rdw.data() + row * C, scratch_g.data(), scratch_b.data(), C);
        for (int64_t c = 0; c < C; c++) {
          rdg[n * C + c] += double(dwf[row * C + c]) * w[row * C + c];
          rdbeta[n * C + c] += double(dbf[row]) * w[row * C + c];
        }
      }
    std::vector<float> first_dg, first_dbeta;
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      std::vector<float> dw(N * O * C, 9.0f), db(N * O, 9.0f), dg(N * C, 9.0f), dbeta(N * C, 9.0f);
      cpu_backend().fold_affine_backward(w.data(), g.data(), beta.data(), dwf.data(), dbf.data(), dw.data(), db.data(),
                                         dg.data(), dbeta.data(), N, O, C);
      double worst = 0.0;
      for (int64_t i = 0; i < N * C; i++)
        worst = std::max({worst, std::fabs(dg[i] - rdg[i]) / std::sqrt(double(O)),
                          std::fabs(dbeta[i] - rdbeta[i]) / std::sqrt(double(O))});
      if (threads == 1) {
        first_dg = dg;
        first_dbeta = dbeta;
      }
      const bool same = dw == rdw && db == dbf && dg == first_dg && dbeta == first_dbeta;
      expect(same && worst < 1e-5, "fold_affine_backward N=" + std::to_string(N) + " O=" + std::to_string(O) +
                                       " C=" + std::to_string(C) + " on " + std::to_string(threads) +
                                       " threads: the row kernel's dw, sums as 1 thread's and near double's (" +
                                       std::to_string(worst) + ")");
    }
  }
  set_num_threads(saved_threads);
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
  // The AVX-512 GELU's tables (math.h): both halves, every interval and its edges, the tails.
  double worst_gelu = 0.0, worst_grad = 0.0;
  for (float x = -8.0f; x <= 8.0f; x += 0.0007f) {
    const double xd = x, cdf = 0.5 * (1.0 + std::erf(xd / std::sqrt(2.0)));
    const double grad = cdf + xd * std::exp(-0.5 * xd * xd) / std::sqrt(2.0 * M_PI);
    worst_gelu = std::max(worst_gelu, std::fabs(gelu_table(x) - xd * cdf) / std::max(1.0, std::fabs(xd)));
    worst_grad = std::max(worst_grad, std::fabs(gelu_grad_table(x) - grad));
  }
  expect(worst_gelu < 1.2e-7, "gelu_table within 1.2e-7 max(1, |x|) of x Phi(x) (got " + std::to_string(worst_gelu) + ")");
  expect(worst_grad < 2e-7, "gelu_grad_table within 2e-7 of Phi(x) + x phi(x) (got " + std::to_string(worst_grad) + ")");
  expect(gelu_table(-30.0f) == 0.0f && gelu_table(30.0f) == 30.0f && gelu_grad_table(-30.0f) == 0.0f &&
             gelu_grad_table(30.0f) == 1.0f && gelu_grad_table(INFINITY) == 1.0f && gelu_grad_table(-INFINITY) == 0.0f,
         "the GELU tables' tails are exact: gelu 0 or x, gelu' 0 or 1");
  expect(std::isnan(gelu_table(NAN)) && std::isnan(gelu_grad_table(NAN)), "NaN propagates through the GELU tables");
}

#if defined(__x86_64__)
// math.h's loops as the compiler vectorises them for AVX-512: the reference for math_avx512.h.
__attribute__((target("avx512f"), noinline)) void vectorised_math(const float* x, float* e, float* g, float* dg, int n) {
#pragma omp simd
  for (int i = 0; i < n; i++) {
    e[i] = fast_exp(x[i]);
    g[i] = gelu_table(x[i]);
    dg[i] = gelu_grad_table(x[i]);
  }
}
__attribute__((target("avx512f"), noinline)) void lanes_math(const float* x, float* e, float* g, float* dg, int n) {
  for (int i = 0; i < n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    _mm512_storeu_ps(e + i, exp_avx512(v));
    _mm512_storeu_ps(g + i, gelu_avx512(v));
    _mm512_storeu_ps(dg + i, gelu_grad_avx512(v));
  }
}
#endif

// math_avx512.h's vectors against math.h's scalar formulas (the table GELU's) vectorised by the
// compiler: the same bits under GCC's optimised builds (the same operations, contracted into the same FMAs); within
// rounding under another compiler or the sanitizers' -O1 build, which contract differently (an
// absolute error growing with |x| where GELU cancels: x Phi(x) for x near -5.6 is ~1e-7 of noise);
// the clamps' edges, infinities and NaN included.
void test_math_avx512() {
#if defined(__x86_64__)
  if (cpu_isa_best() < CPU_ISA_AVX512) return;
  std::vector<float> x;
  for (float v = -100.0f; v <= 100.0f; v += 0.0137f) x.push_back(v);
  for (float v : {0.0f, -0.0f, 4.0f * 1.41421356f, -4.0f * 1.41421356f, 88.3762626647949f, -87.3365447504f, 89.0f, -88.0f,
                  1e-30f, -1e-30f, GELU_CDF_TOP, -GELU_CDF_TOP, GELU_GRAD_TOP, -GELU_GRAD_TOP, INFINITY, -INFINITY, NAN})
    x.push_back(v);
  while (x.size() % 16) x.push_back(0.5f);
  const int n = static_cast<int>(x.size());
  std::vector<float> e0(n), g0(n), d0(n), e1(n), g1(n), d1(n);
  vectorised_math(x.data(), e0.data(), g0.data(), d0.data(), n);
  lanes_math(x.data(), e1.data(), g1.data(), d1.data(), n);
  auto agree = [](float a, float b, float at) {
#if defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
    (void)at;
    return std::memcmp(&a, &b, 4) == 0;
#else
    return (std::isnan(a) && std::isnan(b)) || a == b ||
           std::fabs(a - b) <= 4e-7f * std::fabs(a) + 2e-7f * std::fmax(1.0f, std::fabs(at));
#endif
  };
  int bad = 0;
  for (int i = 0; i < n; i++)
    bad += !agree(e0[i], e1[i], x[i]) + !agree(g0[i], g1[i], x[i]) + !agree(d0[i], d1[i], x[i]);
  expect(bad == 0, "math_avx512.h's exp, gelu and gelu_grad equal math.h's vectorised (" + std::to_string(bad) +
                       " of " + std::to_string(3 * n) + " differ)");
#endif
}

// The GELU row kernels on every instruction set against double formulas: written and (beta)
// blended forward, written and accumulated backward, over lengths with a partial last vector.
void test_gelu_rows() {
  std::mt19937 rng(16);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  const CpuIsa saved = cpu_isa_active();
  for (int isa = 0; isa <= cpu_isa_best(); isa++) {
    cpu_isa_set(static_cast<CpuIsa>(isa));
    for (int64_t n : {1, 15, 16, 37, 64}) {
      std::vector<float> x(n), dy(n), y0(n), y(n), dx(n);
      for (auto* v : {&x, &dy, &y0})
        for (auto& e : *v) e = dist(rng);
      double worst = 0.0;
      for (float beta : {0.0f, 0.5f}) {
        y = y0;
        gelu_forward_range_cpu(x.data(), y.data(), n, beta);
        for (int64_t i = 0; i < n; i++) {
          const double g = 0.5 * x[i] * (1.0 + std::erf(x[i] / std::sqrt(2.0)));
          worst = std::max(worst, std::fabs(g + beta * y0[i] - y[i]));
        }
      }
      for (bool acc : {false, true}) {
        dx = y0;
        gelu_backward_range_cpu(x.data(), dy.data(), dx.data(), n, acc);
        for (int64_t i = 0; i < n; i++) {
          const double d = gelu_grad_exact(x[i]);
          worst = std::max(worst, std::fabs((acc ? y0[i] : 0.0) + dy[i] * d - dx[i]));
        }
      }
      expect(worst < 5e-6, std::string("gelu rows ") + cpu_isa_name(static_cast<CpuIsa>(isa)) + " n=" + std::to_string(n) +
                               " (" + std::to_string(worst) + ")");
    }
  }
  cpu_isa_set(saved);
}

// Backend::map's GELU and GELU-gradient on a strided layout (a transposed view) and accumulated:
// the same values, bit for bit, as the row kernels on the contiguous elements, on every
// instruction set (one GELU an instruction set, whatever the layout).
void test_gelu_maps() {
  std::mt19937 rng(17);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  const int64_t R = 5, C = 19;  // x is R x C; the map walks its transpose (C x R, strides 1 and C)
  std::vector<float> x(R * C), dy(R * C), base(R * C);
  for (auto* v : {&x, &dy, &base})
    for (auto& e : *v) e = dist(rng);
  const CpuIsa saved = cpu_isa_active();
  for (int isa = 0; isa <= cpu_isa_best(); isa++) {
    cpu_isa_set(static_cast<CpuIsa>(isa));
    for (MapOp op : {MAP_GELU, MAP_GELU_GRAD})
      for (bool acc : {false, true}) {
        std::vector<float> want = base, got = base;
        if (op == MAP_GELU) {
          gelu_forward_range_cpu(x.data(), want.data(), R * C, acc ? 1.0f : 0.0f);
        } else {
          gelu_backward_range_cpu(x.data(), dy.data(), want.data(), R * C, acc);
        }
        MapArgs m;
        m.op = op, m.nd = 2, m.accumulate = acc;
        m.shape[0] = C, m.shape[1] = R;
        m.out = got.data(), m.out_strides[0] = 1, m.out_strides[1] = C;
        m.a = x.data(), m.a_strides[0] = 1, m.a_strides[1] = C;
        m.b = dy.data(), m.b_strides[0] = 1, m.b_strides[1] = C;
        cpu_backend().map(m);
        expect(got == want, std::string("map ") + (op == MAP_GELU ? "gelu" : "gelu_grad") + (acc ? " accumulated" : "") +
                                 " on a transposed view, " + cpu_isa_name(static_cast<CpuIsa>(isa)) +
                                 ": the row kernel's bits");
      }
  }
  cpu_isa_set(saved);
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

// A tensor read by several ops: the later consumers' backward kernels add into the gradient
// the earlier ones left (GEMM's beta, LayerNorm's accumulate flag) rather than writing a fresh
// buffer that a separate pass then adds; the sum is the same as from separate graphs.
void test_autograd_fanout_accumulates_in_kernels() {
  const Tensor x = randn({70, 24}, 5, 0.0f, 1.0f), a = randn({24, 9}, 6, 0.0f, 1.0f), b = randn({24, 5}, 7, 0.0f, 1.0f);
  const Tensor v = randn({70, 24}, 8, 0.0f, 1.0f);
  x->requires_grad = true;
  auto loss_of = [&](const Tensor& in, int which) {
    Tensor l;
    if (which & 1) l = sum(matmul(in, a), {}, false);
    if (which & 2) {
      const Tensor t = sum(matmul(in, b), {}, false);
      l = l ? add(l, t) : t;
    }
    if (which & 4) {
      const Tensor t = sum(mul(layernorm(in, nullptr, nullptr, 1e-5f), v), {}, false);
      l = l ? add(l, t) : t;
    }
    return l;
  };
  std::vector<float> parts(static_cast<size_t>(x->numel()), 0.0f);
  for (int which : {1, 2, 4}) {
    const Tensor xi = detach(x);
    xi->requires_grad = true;
    backward(loss_of(xi, which), nullptr);
    for (int64_t i = 0; i < x->numel(); i++) parts[i] += xi->grad->f32()[i];
  }
  profile_start();
  backward(loss_of(x, 7), nullptr);
  const ProfileReport report = profile_stop();
  int64_t adds = 0;
  for (const ProfileCall& c : report.calls)
    if (c.label.find("copy+=") != std::string::npos && c.label.find(std::to_string(x->numel())) != std::string::npos)
      adds += c.calls;  // (the loss's scalar sums pass their gradient on with adds of one element)
  double worst = 0.0;
  for (int64_t i = 0; i < x->numel(); i++) worst = std::max(worst, std::fabs(double(x->grad->f32()[i]) - parts[i]));
  expect(worst < 1e-5, "a fan-out's gradient equals the sum of its consumers' (" + std::to_string(worst) + ")");
  expect(adds == 0, "a fan-out's later consumers add into its gradient in their own kernels (" + std::to_string(adds) +
                        " separate adding passes)");
}

// The walk frees what it passes: when the backward of the first op of a chain runs, the later
// ops' activations and saved tensors are gone (a walk that held them to the end kept a whole
// model's activations alive through backward).
// Split-K products keep one partial C per extra thread with the calling thread; a pool grown
// between products adds parts without losing the ones it has (they once were copied shallowly
// and freed, so two threads summed into one block).
void test_split_k_parts_across_pool_sizes() {
  const int64_t M = 37, N = 50, K = 2000;  // split K: a narrow C, a long K
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> A(M * K), B(K * N), ref(M * N, 0.0f);
  for (auto& v : A) v = dist(rng);
  for (auto& v : B) v = dist(rng);
  for (int64_t i = 0; i < M; i++)
    for (int64_t k = 0; k < K; k++)
      for (int64_t j = 0; j < N; j++) ref[i * N + j] += A[i * K + k] * B[k * N + j];
  double worst = 0.0;
  for (int threads : {2, 3, 4, 6, 3}) {
    set_num_threads(threads);
    for (int rep = 0; rep < 2; rep++) {
      std::vector<float> C(M * N, NAN);
      sgemm(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
      for (int64_t e = 0; e < M * N; e++) worst = std::max(worst, std::fabs(static_cast<double>(C[e]) - ref[e]));
    }
  }
  set_num_threads(0);
  expect(worst < 1e-3, "split-K products on a pool grown from 2 to 6 threads (err " + std::to_string(worst) + ")");
}

// Products on several threads at once share the products' scratch pool (packed B, split-K parts,
// the transposed product, a few rows' packed A and last panel): each gets what it gets alone.
void test_products_on_several_threads() {
  struct Shape {
    bool ta;
    int64_t M, N, K;
  };
  // packed (two chunks of K), split K, the transposed A^T B, few rows against a row-major B with
  // a partial last panel and A packed
  const Shape shapes[] = {{false, 300, 600, 3000}, {false, 37, 50, 2000}, {true, 40, 1100, 1100}, {false, 50, 200, 700}};
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<std::vector<float>> As, Bs, refs;
  for (const Shape& s : shapes) {
    As.emplace_back(s.M * s.K);
    Bs.emplace_back(s.K * s.N);
    for (auto& v : As.back()) v = dist(rng);
    for (auto& v : Bs.back()) v = dist(rng);
    refs.emplace_back(s.M * s.N);
    sgemm(s.ta, false, s.M, s.N, s.K, 1.0f, As.back().data(), s.ta ? s.M : s.K, Bs.back().data(), s.N, 0.0f,
          refs.back().data(), s.N);
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; t++)
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 3; rep++)
        for (size_t i = 0; i < 4; i++) {
          const size_t k = (i + static_cast<size_t>(t)) % 4;  // each thread in its own order
          const Shape& s = shapes[k];
          std::vector<float> C(s.M * s.N, NAN);
          sgemm(s.ta, false, s.M, s.N, s.K, 1.0f, As[k].data(), s.ta ? s.M : s.K, Bs[k].data(), s.N, 0.0f, C.data(), s.N);
          if (std::memcmp(C.data(), refs[k].data(), C.size() * 4) != 0) mismatches++;
        }
    });
  for (auto& th : threads) th.join();
  expect(mismatches == 0, "products on four threads at once equal each alone, bit for bit (" +
                              std::to_string(mismatches.load()) + " of 48 differ)");
}

void test_backward_frees_as_it_goes() {
  const Tensor x = randn({1 << 18}, 5, 0.0f, 1.0f);  // 1 MiB
  x->requires_grad = true;
  int64_t live_at_first_op = -1;
  Tensor y = record(add_scalar(detach(x), 0.0f), "probe", {x}, [&](const Tensor& dout, Grads& g) {
    live_at_first_op = memory_stats().bytes;
    g.add(0, dout);
  });
  for (int i = 0; i < 12; i++) y = gelu(y);  // 12 activations of 1 MiB, each saved by the next gelu
  const int64_t before = memory_stats().bytes;
  backward(sum(y, {}, false), nullptr);
  y = nullptr;
  // 14 MiB live after the forward; by the first op's backward the 12 activations after it are gone.
  const double freed_mib = static_cast<double>(before - live_at_first_op) / (1 << 20);
  expect(live_at_first_op >= 0 && freed_mib > 6,
         "backward frees activations as it passes (" + std::to_string(freed_mib) + " MiB freed by the first op)");
}

// GELU's gradient is computed over the incoming gradient when the walk owns it: the backward of
// branch_linear with GELU needs one output-sized buffer, not two (the largest of a stage).
void test_gelu_backward_in_place() {
  const int64_t R = 1000, N = 4, O = 512, C = 16;
  const Tensor x = randn({R, C}, 1, 0.0f, 1.0f), w = randn({N, O, C}, 2, 0.0f, 0.1f);
  w->requires_grad = true;
  const Tensor loss = sum(branch_linear(x, w, nullptr, nullptr, nullptr, true, true), {}, false);
  const double out_bytes = static_cast<double>(R * N * O * 4);
  reset_peak_bytes();
  const int64_t before = memory_stats().bytes;
  backward(loss, nullptr);
  const double grew = static_cast<double>(memory_stats().peak_bytes - before);
  expect(grew < 1.5 * out_bytes, "branch_linear's GELU backward works over the incoming gradient (" +
                                     std::to_string(grew / out_bytes) + " output sizes at the peak)");
}

// GELU's backward with its bias sums: the CPU's one pass and the Backend default (the map and
// the reduction, which the CUDA backend runs) against a double-precision reference, written and
// accumulated, in place over dy too; runs of columns cut at 256 with a partial last one.
void test_gelu_backward_bias() {
  const int64_t B = 2, R = 70, C = 300;
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 1.5f);
  std::vector<float> x(B * R * C), dy(B * R * C), db0(B * C);
  for (auto& v : x) v = dist(rng);
  for (auto& v : dy) v = dist(rng);
  for (auto& v : db0) v = dist(rng);
  for (int way = 0; way < 2; way++)
    for (bool acc : {false, true})
      for (bool in_place : {false, true}) {
        std::vector<float> dyc(dy), dx(B * R * C, NAN), db(db0);
        float* out = in_place ? dyc.data() : dx.data();
        Backend& be = cpu_backend();
        if (way == 0) {
          be.gelu_backward_bias(x.data(), dyc.data(), out, db.data(), B, R, C, acc);
        } else {
          be.Backend::gelu_backward_bias(x.data(), dyc.data(), out, db.data(), B, R, C, acc);
        }
        double worst_dx = 0.0, worst_db = 0.0;
        for (int64_t b = 0; b < B; b++)
          for (int64_t c = 0; c < C; c++) {
            double sum = 0.0;
            for (int64_t r = 0; r < R; r++) {
              const int64_t e = (b * R + r) * C + c;
              const double grad = gelu_grad_exact(x[e]);
              sum += dy[e] * grad;
              worst_dx = std::max(worst_dx, std::fabs(out[e] - dy[e] * grad));
            }
            const double ref = (acc ? db0[b * C + c] : 0.0) + sum;
            worst_db = std::max(worst_db, std::fabs(db[b * C + c] - ref));
          }
        expect(worst_dx < 1e-5 && worst_db < 1e-4,
               std::string("gelu_backward_bias ") + (way == 0 ? "CPU one pass" : "Backend default") +
                   (acc ? " accumulating" : " writing") + (in_place ? " over dy" : "") + " (dx err " +
                   std::to_string(worst_dx) + ", db err " + std::to_string(worst_db) + ")");
      }
}

// The packed path's row blocks: every row in exactly one, in order; multiples of 12 rows up to 144
// (the last may be shorter); an even number where there are several, the two halves' rows no
// more than 12 apart (the last block's shortfall aside); `of` finds each row's.
void test_sgemm_row_blocks() {
  for (int64_t M = 1; M <= 5000; M += (M < 400 ? 1 : 37)) {
    const SgemmRowBlocks rb = sgemm_row_blocks(M);
    const int64_t blocks = rb.count;
    bool ok = blocks >= 1 && rb.start(0) == 0 && rb.start(blocks) == M && (blocks == 1 || blocks % 2 == 0);
    for (int64_t b = 0; ok && b < blocks; b++) {
      const int64_t r0 = rb.start(b), r1 = rb.start(b + 1);
      ok = r1 > r0 && r1 - r0 <= 144 && (r0 % 12 == 0) && (b + 1 == blocks || r1 % 12 == 0);
      for (int64_t r = r0; ok && r < r1; r++) ok = rb.of(r) == b;
    }
    if (ok && blocks > 1) {
      const int64_t half = rb.start(blocks / 2), last_short = (12 - M % 12) % 12;
      ok = std::abs((M + last_short - half) - half) <= 12;
    }
    expect(ok, "sgemm row blocks of " + std::to_string(M) + " rows (" + std::to_string(blocks) + ")");
  }
}

// GemmArgs of C (rows ldc apart) = alpha * A B, A (M x K) and B (K x N) row-major.
GemmArgs row_major_product(int64_t M, int64_t N, int64_t K, float alpha, const float* A, const float* B, float* C,
                           int64_t ldc) {
  GemmArgs g;
  g.M = static_cast<int>(M), g.N = static_cast<int>(N), g.K = static_cast<int>(K), g.alpha = alpha;
  g.A = A, g.a_m = K, g.a_k = 1;
  g.B = B, g.b_n = 1, g.b_k = N;
  g.C = C, g.c_m = ldc;
  return g;
}

// The product with GELU's backward in its epilogue (gemm_gelu_backward): the CPU's, on each of
// sgemm's paths (row blocks of the packed path with a partial last one, few rows read against B
// in place, an unpacked small product, split K, whose blocks are not the packed path's, so the
// sums are taken afterwards), and the Backend default, against a double-precision reference. The
// CPU's bias sums are exactly the fp64 sums of C's blocks of rows (sgemm_row_blocks), added in
// order, on either route; its bits are the same on 1, 2 and 3 threads (but split K's, whose
// product itself is split by the threads).
void test_gemm_gelu_backward() {
  // The packed path's blocks (300 x 96, A read in place; 150 x 256, rows 1 KiB apart, staged), its
  // register tiles (150 x 4096: a task's block of C larger than L2; rows 16 KiB apart, staged, or
  // 4120 floats apart), a few rows read in place, a small product, K split over the threads.
  const std::vector<std::array<int64_t, 3>> sizes = {{300, 96, 40}, {150, 256, 48}, {150, 4096, 32}, {50, 200, 64},
                                                     {7, 33, 5},      {200, 64, 2048}};
  std::mt19937 rng(9);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const float alpha = 0.5f;
  for (const auto& [M, N, K] : sizes) {
    std::vector<float> A(M * K), B(K * N), pre(M * N);
    for (auto& v : A) v = dist(rng);
    for (auto& v : B) v = dist(rng);
    for (auto& v : pre) v = 1.5f * dist(rng);
    std::vector<double> ref(M * N), ref_db(N, 0.0);
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double s = 0.0;
        for (int64_t k = 0; k < K; k++) s += double(A[m * K + k]) * B[k * N + n];
        const double grad = gelu_grad_exact(pre[m * N + n]);
        ref[m * N + n] = alpha * s * grad;
        ref_db[n] += ref[m * N + n];
      }
    for (const int64_t pad : {int64_t{0}, int64_t{24}}) {  // C and pre with rows N or N + 24 apart
      const int64_t ld = N + pad;
      const std::string shape = std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) +
                                (pad ? ", rows " + std::to_string(ld) + " apart" : "");
      std::vector<float> pre_ld(M * ld, NAN);
      for (int64_t m = 0; m < M; m++) std::copy(&pre[m * N], &pre[m * N] + N, &pre_ld[m * ld]);
      std::vector<float> first_c, first_db;
      for (int way = 0; way < 4; way++) {  // the CPU's on 1, 2, 3 threads; the Backend default
        set_num_threads(way < 3 ? way + 1 : 2);
        std::vector<float> C(M * ld, NAN), db(N, NAN);
        const GemmArgs g = row_major_product(M, N, K, alpha, A.data(), B.data(), C.data(), ld);
        Backend& be = cpu_backend();
        way < 3 ? be.gemm_gelu_backward(g, pre_ld.data(), db.data())
                : be.Backend::gemm_gelu_backward(g, pre_ld.data(), db.data());
        std::vector<float> c(M * N);  // C's M x N values
        bool gaps_kept = true;
        for (int64_t m = 0; m < M; m++) {
          std::copy(&C[m * ld], &C[m * ld] + N, &c[m * N]);
          for (int64_t n = N; n < ld; n++) gaps_kept = gaps_kept && std::isnan(C[m * ld + n]);
        }
        double worst = 0.0, worst_db = 0.0;  // (a NaN counts as infinitely wrong)
        auto worse = [](double w, double d) { return std::isnan(d) ? INFINITY : std::max(w, d); };
        for (int64_t i = 0; i < M * N; i++) worst = worse(worst, std::fabs(c[i] - ref[i]) / (1.0 + std::fabs(ref[i])));
        for (int64_t n = 0; n < N; n++) worst_db = worse(worst_db, std::fabs(db[n] - ref_db[n]) / (1.0 + std::fabs(ref_db[n])));
        const std::string who = way < 3 ? "CPU on " + std::to_string(way + 1) + " threads" : "Backend default";
        expect(worst < 1e-4 && worst_db < 1e-4 && gaps_kept,
               "gemm_gelu_backward " + shape + ", " + who + " (err " + std::to_string(worst) + ", db err " +
                   std::to_string(worst_db) + (gaps_kept ? "" : ", wrote between the rows") + ")");
        if (way < 3) {
          std::vector<double> total(N, 0.0);
          const SgemmRowBlocks rb = sgemm_row_blocks(M);
          for (int64_t b = 0; b < rb.count; b++) {
            std::vector<double> part(N, 0.0);
            for (int64_t m = rb.start(b); m < rb.start(b + 1); m++)
              for (int64_t n = 0; n < N; n++) part[n] += c[m * N + n];
            for (int64_t n = 0; n < N; n++) total[n] += part[n];
          }
          bool same = true;
          for (int64_t n = 0; n < N; n++) same = same && db[n] == static_cast<float>(total[n]);
          expect(same, "gemm_gelu_backward " + shape + ", " + who + ": the bias sums are C's block sums in order");
        }
        if (way == 0) first_c = c, first_db = db;
        if ((way == 1 || way == 2) && K < 1024)
          expect(c == first_c && db == first_db, "gemm_gelu_backward " + shape + ": the same bits on " +
                                                     std::to_string(way + 1) + " threads as on one");
      }
    }
  }
  set_num_threads(0);
}

// The tunings change how the packed path reads and walks a product, never a sum's order: every
// path they touch (a transposed A read in place or packed, long K blocked, several chunks of
// columns, the tiles' GELU output and its backward, bias, beta 1) gives the same bits under each.
void test_gemm_tunings_same_bits(CpuIsa isa) {
  cpu_isa_set(isa);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const GemmTuning saved = gemm_tuning();
  const GemmTuning tunings[] = {GEMM_TUNING_AMD, GEMM_TUNING_INTEL, GemmTuning{true, false, 96},
                                GemmTuning{false, true, 64, true}};
  // M, N, K, A transposed, B transposed, beta 1, act (0 none, 1 GELU output, 2 GELU backward)
  const int64_t sizes[][7] = {{300, 192, 700, 1, 0, 0, 0}, {150, 1100, 300, 0, 0, 1, 0}, {290, 1500, 64, 0, 1, 0, 1},
                              {150, 2100, 48, 0, 0, 0, 2}, {160, 70, 2100, 1, 0, 0, 0}};
  for (auto& sz : sizes) {
    const int64_t M = sz[0], N = sz[1], K = sz[2];
    const bool ta = sz[3] != 0, tb = sz[4] != 0, add = sz[5] != 0;
    const int act_kind = static_cast<int>(sz[6]);
    std::vector<float> A(M * K), B(K * N), bias(N), C0(M * N), pre(M * N);
    for (auto* v : {&A, &B, &bias, &C0, &pre})
      for (auto& x : *v) x = dist(rng);
    std::vector<float> first_c, first_act;
    for (const GemmTuning& t : tunings) {
      gemm_tuning_set(t);
      std::vector<float> C(C0), out(M * N, 0.0f);
      if (act_kind == 2) {
        // GELU's backward as the ops run it: from the tiles or over finished blocks, as the tuning
        // and the sizes have it; out holds the bias sums.
        const GemmArgs g = row_major_product(M, N, K, 0.5f, A.data(), B.data(), C.data(), N);
        out.resize(N);
        cpu_backend().gemm_gelu_backward(g, pre.data(), out.data());
      } else {
        const GemmAct forward{out.data(), N};
        sgemm(ta, tb, M, N, K, 0.5f, A.data(), ta ? M : K, B.data(), tb ? K : N, add ? 1.0f : 0.0f, C.data(), N, true,
              bias.data(), false, nullptr, act_kind == 1 ? &forward : nullptr);
      }
      if (first_c.empty()) {
        first_c = C, first_act = out;
        continue;
      }
      char name[200];
      std::snprintf(name, sizeof name, "sgemm %s M=%lld N=%lld K=%lld ta=%d tb=%d act=%d: the %s tuning's bits are the amd tuning's",
                    cpu_isa_name(isa), (long long)M, (long long)N, (long long)K, ta ? 1 : 0, tb ? 1 : 0, act_kind,
                    gemm_tuning_name(t));
      expect(C == first_c && out == first_act, name);
    }
  }
  gemm_tuning_set(saved);
  for (const int64_t cols : {int64_t{0}, int64_t{100}, int64_t{-32}}) {
    const std::string what = "gemm_tuning_set with chunks of " + std::to_string(cols) + " columns (not a positive multiple of 32)";
    expect_error([&] { gemm_tuning_set(GemmTuning{false, false, cols}); }, ERROR_ARGUMENT, what);
    expect(gemm_tuning().chunk_cols == saved.chunk_cols, what + " leaves the tuning as it was");
  }
}

// B packed ahead (gemm.h, PackedB): every path that reads the panels (few rows reading B in
// place, with and without K split over the threads; the packed path, its tiles' GELU and
// epilogue; a transposed B) gives the bits of the same product reading B, with the edge panel
// zero padded; panels of another width, or a bf16 product, are not read (garbage there changes
// nothing).
void test_gemm_packed_b(CpuIsa isa) {
  cpu_isa_set(isa);
  std::mt19937 rng(12);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const int W = sgemm_panel_width();
  // M, N, K, A transposed, B transposed, beta 1, act (0 none, 1 GELU output), bias
  const int64_t sizes[][8] = {{50, 576, 192, 0, 0, 0, 0, 1}, {50, 100, 192, 0, 0, 0, 1, 1}, {7, 70, 33, 0, 1, 1, 0, 0},
                              {50, 192, 4608, 0, 0, 0, 0, 1}, {50, 40, 1000, 1, 0, 1, 0, 0},
                              {300, 200, 300, 0, 0, 0, 1, 1}, {150, 1100, 300, 1, 1, 1, 0, 1}, {1, 64, 64, 0, 0, 0, 0, 1}};
  for (auto& sz : sizes) {
    const int64_t M = sz[0], N = sz[1], K = sz[2];
    const bool ta = sz[3] != 0, tb = sz[4] != 0, add = sz[5] != 0, gelu = sz[6] != 0, has_bias = sz[7] != 0;
    std::vector<float> A(M * K), B(K * N), bias(N), C0(M * N);
    for (auto* v : {&A, &B, &bias, &C0})
      for (auto& x : *v) x = dist(rng);
    const int64_t ldb = tb ? K : N;
    // op(B) row-major, then packed
    std::vector<float> rows(K * N);
    for (int64_t k = 0; k < K; k++)
      for (int64_t n = 0; n < N; n++) rows[k * N + n] = tb ? B[n * K + k] : B[k * N + n];
    const int64_t panels = (N + W - 1) / W;
    std::vector<float> panel_data(panels * K * W, -7.0f);
    sgemm_pack_b(K, N, rows.data(), N, panel_data.data());
    bool padded = true;
    for (int64_t q = 0; q < panels; q++)
      for (int64_t k = 0; k < K; k++)
        for (int64_t j = 0; j < W; j++) {
          const float want = q * W + j < N ? rows[k * N + q * W + j] : 0.0f;
          padded = padded && panel_data[(q * K + k) * W + j] == want;
        }
    std::vector<float> garbage(panels * K * W * 2, std::nanf(""));
    const PackedB packed{panel_data.data(), W, K * W}, other_width{garbage.data(), W / 2, K * W}, nan_panels{garbage.data(), W, K * W};
    auto run = [&](const PackedB* pb, bool bf16, std::vector<float>* act_out) {
      std::vector<float> C(C0);
      const GemmAct act{act_out->data(), N};
      std::atomic<int64_t> blocks{0};  // (the epilogue runs on the pool's threads)
      const GemmBlockFn count = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) { blocks += (i1 - i0) * (j1 - j0); };
      sgemm(ta, tb, M, N, K, 0.5f, A.data(), ta ? M : K, B.data(), ldb, add ? 1.0f : 0.0f, C.data(), N, true,
            has_bias ? bias.data() : nullptr, bf16, &count, gelu ? &act : nullptr, pb);
      expect(blocks == M * N, "sgemm with packed B: the epilogue sees every element of C once");
      return C;
    };
    std::vector<float> act_plain(M * N, 0.0f), act_packed(M * N, 0.0f), act_other(M * N, 0.0f);
    const std::vector<float> plain = run(nullptr, false, &act_plain);
    const std::vector<float> with_packed = run(&packed, false, &act_packed);
    const std::vector<float> with_other = run(&other_width, false, &act_other);
    char name[200];
    std::snprintf(name, sizeof name, "sgemm %s M=%lld N=%lld K=%lld ta=%d tb=%d", cpu_isa_name(isa), (long long)M,
                  (long long)N, (long long)K, ta ? 1 : 0, tb ? 1 : 0);
    expect(padded, std::string(name) + ": sgemm_pack_b's panels hold op(B), zeros past N");
    expect(with_packed == plain && act_packed == act_plain, std::string(name) + ": packed B gives the bits of B");
    expect(with_other == plain && act_other == act_plain, std::string(name) + ": panels of another width are not read");
    if (cpu_has_bf16() && isa == CPU_ISA_AVX512) {
      std::vector<float> a0(M * N, 0.0f), a1(M * N, 0.0f);
      expect(run(&nan_panels, true, &a1) == run(nullptr, true, &a0), std::string(name) + ": bf16 products do not read fp32 panels");
    }
  }
  cpu_isa_set(cpu_isa_best());
}

std::vector<float> to_vector(const Tensor& t) {
  const Tensor c = contiguous(t);
  return std::vector<float>(c->ptr_f32(), c->ptr_f32() + c->numel());
}

// Rows normalised by the product (gemm.h, RowNorm): on every path (a small product; few rows
// against a row-major B, read in place by each thread from its own normalised copy or packed from
// one; K split over the threads; the packed path), with and without a residual, packed B, a bias
// and a GELU output, on one thread and two: the bits of the product of the rows normalised first
// as the LayerNorm op makes them (layernorm_row_cpu of x + resid). A transposed A, or a residual
// of no rows, is refused.
void test_gemm_row_norm(CpuIsa isa) {
  cpu_isa_set(isa);
  const int saved_threads = get_num_threads();
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  const int W = sgemm_panel_width();
  // M, N, K, resid rows (0: none), packed B, GELU, bias
  const int64_t sizes[][7] = {{50, 576, 192, 0, 1, 0, 1}, {50, 768, 192, 50, 1, 1, 1}, {50, 100, 192, 25, 0, 0, 1},
                              {50, 6912, 192, 0, 1, 0, 1}, {50, 40, 1000, 50, 0, 0, 0}, {300, 200, 48, 100, 0, 1, 1},
                              {7, 30, 20, 7, 0, 0, 0}, {1, 768, 192, 1, 1, 1, 1}, {13, 64, 1, 0, 0, 0, 1}};
  for (const int threads : {1, 2}) {
    set_num_threads(threads);
    for (auto& sz : sizes) {
      const int64_t M = sz[0], N = sz[1], K = sz[2], RR = sz[3];
      const bool use_packed = sz[4] != 0, gelu = sz[5] != 0, has_bias = sz[6] != 0;
      const int64_t lda = K + 3;  // rows with a gap after them
      std::vector<float> A(M * lda), resid(std::max<int64_t>(RR, 1) * (K + 5)), B(K * N), bias(N);
      for (auto* v : {&A, &resid, &B, &bias})
        for (auto& x : *v) x = dist(rng);
      for (int64_t i = 0; i < M; i++) A[i * lda] += 5.0f * static_cast<float>(i % 3);  // rows of different means
      std::vector<float> panels(((N + W - 1) / W) * K * W);
      sgemm_pack_b(K, N, B.data(), N, panels.data());
      const PackedB packed{panels.data(), W, K * W};
      const RowNorm norm{1e-5f, RR ? resid.data() : nullptr, K + 5, RR};
      // The rows normalised first, as the LayerNorm op does.
      std::vector<float> normed(M * K), sum(K);
      for (int64_t i = 0; i < M; i++) {
        const float* x = A.data() + i * lda;
        if (RR) {
          for (int64_t k = 0; k < K; k++) sum[k] = x[k] + resid[(i % RR) * (K + 5) + k];
          x = sum.data();
        }
        float mean, rstd;
        layernorm_row_cpu(x, nullptr, nullptr, normed.data() + i * K, &mean, &rstd, K, norm.eps);
      }
      auto run = [&](const float* a, int64_t ld, const RowNorm* rn, std::vector<float>* act_out) {
        std::vector<float> C(M * N, std::nanf(""));
        const GemmAct act{act_out->data(), N};
        std::atomic<int64_t> seen{0};
        const GemmBlockFn count = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) { seen += (i1 - i0) * (j1 - j0); };
        sgemm(false, false, M, N, K, 1.0f, a, ld, B.data(), N, 0.0f, C.data(), N, true, has_bias ? bias.data() : nullptr,
              false, &count, gelu ? &act : nullptr, use_packed ? &packed : nullptr, rn);
        expect(seen == M * N, "sgemm with normalised rows: the epilogue sees every element of C once");
        return C;
      };
      std::vector<float> act_ref(M * N, 0.0f), act_norm(M * N, 0.0f);
      const std::vector<float> want = run(normed.data(), K, nullptr, &act_ref);
      const std::vector<float> got = run(A.data(), lda, &norm, &act_norm);
      char name[200];
      std::snprintf(name, sizeof name, "sgemm %s, %d thread(s), M=%lld N=%lld K=%lld, residual of %lld rows%s%s",
                    cpu_isa_name(isa), threads, (long long)M, (long long)N, (long long)K, (long long)RR,
                    use_packed ? ", packed B" : "", gelu ? ", GELU" : "");
      expect(got == want && act_norm == act_ref,
             std::string(name) + ": normalised rows give the bits of the product of the rows normalised first");
    }
  }
  set_num_threads(saved_threads);
  std::vector<float> a(64, 1.0f), b(64, 1.0f), c(64);
  const RowNorm plain{1e-5f, nullptr, 0, 0}, no_rows{1e-5f, a.data(), 8, 0};
  expect_error([&] { sgemm(true, false, 8, 8, 8, 1.0f, a.data(), 8, b.data(), 8, 0.0f, c.data(), 8, true, nullptr, false,
                           nullptr, nullptr, nullptr, &plain); },
               ERROR_ARGUMENT, "sgemm: normalised rows of a transposed A");
  expect_error([&] { sgemm(false, false, 8, 8, 8, 1.0f, a.data(), 8, b.data(), 8, 0.0f, c.data(), 8, true, nullptr, false,
                           nullptr, nullptr, nullptr, &no_rows); },
               ERROR_ARGUMENT, "sgemm: normalised rows with a residual of no rows");
  cpu_isa_set(cpu_isa_best());
}

// branch_linear_normed (ops.h): the bits of branch_linear of the LayerNorm op's output, one
// product of every branch (a shared input) and one per branch (an input per branch, with the
// residual shared by them), packed weights or not, GELU or not; recording a graph (the two ops,
// gradients and all) where a gradient is wanted; errors for a residual of the wrong shape and a
// non-positive eps.
void test_branch_linear_normed() {
  const int64_t R = 50, C = 48, N = 3, O = 80;
  auto k_major = [](const Tensor& w) { return permute(contiguous(permute(w, {2, 0, 1})), {1, 2, 0}); };
  auto packed_of = [](const Tensor& w, bool single) {
    const int64_t n = w->shape[0], o = w->shape[1], c = w->shape[2];
    return pack_weight(permute(reshape(permute(w, {2, 0, 1}), {c, n * o}), {1, 0}), single ? 1 : n);
  };
  const Tensor w = k_major(randn({N, O, C}, 1, 0.0f, 0.3f)), b = randn({N, O}, 2, 0.0f, 0.3f);
  const Tensor x = add_scalar(randn({R, C}, 3, 0.0f, 1.0f), 2.0f), xs = randn({N, R, C}, 4, 0.0f, 1.0f);
  const Tensor resid = randn({R, C}, 5, 0.0f, 1.0f);
  {
    GradMode no_grad(false);
    for (bool gelu : {false, true}) {
      const std::string act = gelu ? " with GELU" : "";
      for (bool use_packed : {false, true}) {
        const std::string how = act + (use_packed ? ", packed weights" : "");
        const Tensor want = branch_linear(layernorm(x, nullptr, nullptr, 1e-6f), w, b, nullptr, nullptr, gelu, true);
        const Tensor got = branch_linear_normed(x, nullptr, 1e-6f, w, b, gelu, true, use_packed ? packed_of(w, true) : nullptr);
        expect(to_vector(got) == to_vector(want), "branch_linear_normed, a shared input" + how + ": the bits of the two ops");
        const Tensor want_n =
            branch_linear(layernorm(xs, nullptr, nullptr, 1e-5f, resid), w, b, nullptr, nullptr, gelu, true);
        const Tensor got_n = branch_linear_normed(xs, resid, 1e-5f, w, b, gelu, true, use_packed ? packed_of(w, false) : nullptr);
        expect(to_vector(got_n) == to_vector(want_n),
               "branch_linear_normed, an input per branch and a residual" + how + ": the bits of the two ops");
      }
    }
    // An input read through strides (a transposed view) is made contiguous first.
    const Tensor xt = permute(contiguous(permute(xs, {0, 2, 1})), {0, 2, 1});
    expect(to_vector(branch_linear_normed(xt, resid, 1e-5f, w, b, false, false)) ==
               to_vector(branch_linear(layernorm(xs, nullptr, nullptr, 1e-5f, resid), w, b, nullptr, nullptr, false, false)),
           "branch_linear_normed: an input with strided rows gives the bits of the two ops");
    // Rows that overlap (a view one float apart) are made contiguous first too.
    const Tensor overlapping = make_view(randn({R + C - 1}, 7, 0.0f, 1.0f), {R, C}, {1, 1}, 0);
    expect(to_vector(branch_linear_normed(overlapping, nullptr, 1e-5f, w, b, false, true)) ==
               to_vector(branch_linear(layernorm(overlapping, nullptr, nullptr, 1e-5f), w, b, nullptr, nullptr, false, true)),
           "branch_linear_normed: an input of overlapping rows gives the bits of the two ops");
    expect_error([&] { branch_linear_normed(xs, randn({R, C + 1}, 6, 0.0f, 1.0f), 1e-5f, w, b, false, true); }, ERROR_SHAPE,
                 "branch_linear_normed: a residual of the wrong width");
    expect_error([&] { branch_linear_normed(xs, randn({R - 1, C}, 6, 0.0f, 1.0f), 1e-5f, w, b, false, true); }, ERROR_SHAPE,
                 "branch_linear_normed: a residual of the wrong number of rows");
    expect_error([&] { branch_linear_normed(x, nullptr, 0.0f, w, b, false, true); }, ERROR_ARGUMENT,
                 "branch_linear_normed: eps 0");
  }
  // With a gradient wanted: the two ops, recorded.
  const Tensor xg = detach(xs);
  xg->requires_grad = true;
  const Tensor y = branch_linear_normed(xg, resid, 1e-5f, w, b, true, true);
  expect(y->grad_fn != nullptr, "branch_linear_normed with a gradient wanted records the graph");
  backward(sum(y, {}, false), nullptr);
  const Tensor x2 = detach(xs);
  x2->requires_grad = true;
  backward(sum(branch_linear(layernorm(x2, nullptr, nullptr, 1e-5f, resid), w, b, nullptr, nullptr, true, true), {}, false),
           nullptr);
  expect(xg->grad && x2->grad && to_vector(xg->grad) == to_vector(x2->grad),
         "branch_linear_normed with a gradient wanted: the input's gradient is the two ops'");
}

// pack_weight and the ops that read its panels (branch_linear one product wide and per branch,
// stage_sum): the same bits as without them, as gradient-free inference computes; errors for a
// weight that is not K-major, groups that do not divide it, and panels of the wrong shape.
void test_packed_weights() {
  GradMode no_grad(false);
  const int64_t R = 50, C = 48, N = 3, O = 80, M = 64;
  auto k_major = [](const Tensor& w) { return permute(contiguous(permute(w, {2, 0, 1})), {1, 2, 0}); };
  auto packed_of = [](const Tensor& w, bool single) {
    const int64_t n = w->shape[0], o = w->shape[1], c = w->shape[2];
    return pack_weight(permute(reshape(permute(w, {2, 0, 1}), {c, n * o}), {1, 0}), single ? 1 : n);
  };
  const Tensor w = k_major(randn({N, O, C}, 1, 0.0f, 0.3f)), b = randn({N, O}, 2, 0.0f, 0.3f);
  const Tensor x = randn({R, C}, 3, 0.0f, 1.0f), xs = randn({N, R, C}, 4, 0.0f, 1.0f);
  for (bool gelu : {false, true}) {
    const Tensor plain = branch_linear(x, w, b, nullptr, nullptr, gelu, true);
    const Tensor packed = branch_linear(x, w, b, nullptr, nullptr, gelu, true, nullptr, packed_of(w, true));
    expect(to_vector(packed) == to_vector(plain), std::string("branch_linear, one product of every branch") +
                                                      (gelu ? " with GELU" : "") + ": packed weights give the same bits");
    const Tensor plain_n = branch_linear(xs, w, b, nullptr, nullptr, gelu, false);
    const Tensor packed_n = branch_linear(xs, w, b, nullptr, nullptr, gelu, false, nullptr, packed_of(w, false));
    expect(to_vector(packed_n) == to_vector(plain_n), std::string("branch_linear, a product per branch") +
                                                          (gelu ? " with GELU" : "") + ": packed weights give the same bits");
  }
  const Tensor h = branch_linear(x, k_major(randn({N, M, C}, 5, 0.0f, 0.3f)), nullptr, nullptr, nullptr, true, true);
  const Tensor w2 = permute(randn({N * M, C}, 6, 0.0f, 0.3f), {1, 0}), b2 = randn({C}, 7, 0.0f, 0.3f);
  const Tensor a = randn({N, R, C}, 8, 0.0f, 1.0f);
  expect(to_vector(stage_sum(x, h, w2, b2, a, 0.5f, nullptr, pack_weight(w2, 1))) == to_vector(stage_sum(x, h, w2, b2, a, 0.5f)),
         "stage_sum: packed weights give the same bits");
  expect_error([&] { pack_weight(randn({8, 16}, 9, 0.0f, 1.0f), 1); }, ERROR_ARGUMENT, "pack_weight: a row-major weight");
  expect_error([&] { pack_weight(permute(randn({16, 9}, 9, 0.0f, 1.0f), {1, 0}), 2); }, ERROR_ARGUMENT,
               "pack_weight: 2 groups of 9 columns");
  expect_error([&] { branch_linear(x, w, b, nullptr, nullptr, false, true, nullptr, packed_of(w, false)); }, ERROR_SHAPE,
               "branch_linear: panels packed per branch for one product of every branch");
}

// Lasting blocks (the packed inference weights): laid one after another in 2 MiB chunks, 64-byte
// aligned and apart, a new chunk where the next does not fit; blocks over half a chunk allocated
// as any other; every chunk given back once its blocks are released, in any order. pack_weight's
// panels are lasting blocks.
void test_lasting_blocks() {
  Backend& be = cpu_backend();
  const int64_t held = lasting_chunks_held();
  expect(held == 0, "lasting blocks: none held before this test (the earlier tests' weights all released)");
  const size_t sizes[] = {900000, 900001, 400000, 100, 1500000};
  std::vector<std::pair<float*, size_t>> blocks;
  for (const size_t bytes : sizes) {
    size_t capacity = 0;
    float* p = static_cast<float*>(be.allocate_lasting(bytes, &capacity));
    blocks.push_back({p, capacity});
    for (size_t i = 0; i < bytes / 4; i++) p[i] = static_cast<float>(blocks.size());
  }
  const uintptr_t chunk = size_t{1} << 21;
  auto at = [&](size_t i) { return reinterpret_cast<uintptr_t>(blocks[i].first); };
  bool aligned = true;
  for (const auto& b : blocks) aligned = aligned && reinterpret_cast<uintptr_t>(b.first) % 64 == 0;
  expect(aligned, "lasting blocks: 64-byte aligned");
  expect(at(1) == at(0) + 900032 && at(0) / chunk == at(1) / chunk, "lasting blocks: the second laid after the first");
  expect(at(2) % chunk == 0 && at(2) != at(0) - at(0) % chunk,
         "lasting blocks: one that does not fit the chunk's rest starts a new chunk");
  expect(at(3) == at(2) + 400000 && lasting_chunks_held() == held + 2, "lasting blocks: two chunks held for four blocks");
  expect((blocks[4].second & 1) == 0, "lasting blocks: a block over half a chunk is allocated as any other");
  bool kept = true;
  for (size_t b = 0; b < blocks.size(); b++)
    for (size_t i = 0; i < sizes[b] / 4; i++) kept = kept && blocks[b].first[i] == static_cast<float>(b + 1);
  expect(kept, "lasting blocks: each keeps its own values (none overlaps another)");
  for (const size_t b : {2, 0, 4, 3}) be.release(blocks[b].first, blocks[b].second);
  expect(lasting_chunks_held() == held + 1, "lasting blocks: a chunk held while one of its blocks is");
  be.release(blocks[1].first, blocks[1].second);
  expect(lasting_chunks_held() == held, "lasting blocks: every chunk given back once its blocks are released");
  {
    const Tensor w = permute(randn({64, 192}, 1, 0.0f, 1.0f), {1, 0});
    const Tensor packed = pack_weight(w, 1);
    expect((packed->storage->capacity & 1) && lasting_chunks_held() == held + 1, "pack_weight: its panels a lasting block");
  }
  expect(lasting_chunks_held() == held, "pack_weight: its chunk given back with the panels");
}

// A GELU branch_linear joined to its stage_sum (GeluLink): the gradient before the GELU comes
// from the sum's product (the profile shows the fused product and no separate GELU backward), and
// every gradient agrees with the unjoined ops', with the LayerNorm folded into fc1 and without.
void test_gelu_link() {
  const int64_t R = 300, C = 16, N = 2, M = 48;
  for (bool folded : {true, false}) {
    std::vector<std::vector<float>> grads[2];
    for (int joined = 0; joined < 2; joined++) {
      const Tensor x = randn({R, C}, 1, 0.0f, 1.0f), w1 = randn({N, M, C}, 2, 0.0f, 0.3f), b1 = randn({N, M}, 3, 0.0f, 0.3f);
      const Tensor g = randn({N, C}, 4, 1.0f, 0.2f), beta = randn({N, C}, 5, 0.0f, 0.2f);
      const Tensor w2 = randn({C, N * M}, 6, 0.0f, 0.3f), b2 = randn({C}, 7, 0.0f, 0.3f), a = randn({N, R, C}, 8, 0.0f, 1.0f);
      const Tensor resid = randn({R, C}, 9, 0.0f, 1.0f), v = randn({R, C}, 10, 0.0f, 1.0f);
      std::vector<Tensor> params = {x, w1, b1, w2, b2, a};
      if (folded) params.insert(params.end(), {g, beta});
      for (const Tensor& t : params) t->requires_grad = true;
      const auto link = joined ? std::make_shared<GeluLink>() : nullptr;
      const Tensor h = branch_linear(x, w1, b1, folded ? g : nullptr, folded ? beta : nullptr, true, true, link);
      const Tensor loss = sum(mul(stage_sum(resid, h, w2, b2, a, 0.5f, link), v), {}, false);
      profile_start();
      backward(loss, nullptr);
      const ProfileReport report = profile_stop();
      bool fused = false, separate = false;
      for (const ProfileCall& c : report.calls) {
        fused = fused || c.label.find("+gelu'") != std::string::npos;
        separate = separate || c.label.find("gelu_backward_bias") != std::string::npos || c.label.find("gelu_grad") != std::string::npos;
      }
      const std::string what = std::string(folded ? "folded" : "unfolded") + (joined ? ", joined" : ", apart");
      expect(fused == (joined == 1) && separate == (joined == 0),
             "GeluLink " + what + ": the GELU's gradient " + (joined ? "in the sum's product" : "a pass of its own"));
      if (joined) expect(!link->pre && !link->db, "GeluLink " + what + ": the link holds nothing after backward");
      for (const Tensor& t : params) grads[joined].emplace_back(t->grad->f32(), t->grad->f32() + t->numel());
    }
    double worst = 0.0;
    for (size_t i = 0; i < grads[0].size(); i++)
      for (size_t e = 0; e < grads[0][i].size(); e++)
        worst = std::max(worst, std::fabs(double(grads[0][i][e]) - grads[1][i][e]) / (1.0 + std::fabs(grads[0][i][e])));
    expect(worst < 1e-5, std::string("GeluLink ") + (folded ? "folded" : "unfolded") +
                             ": joined gradients agree with the ops apart (" + std::to_string(worst) + ")");
  }
}

// A reduction that sums nothing (out's shape is in's) is an element-wise scaled copy in
// launch_reduce; the backend's reduce over every dimension kept (which launch_reduce no longer
// sends it) agrees. Written and accumulated, into a transposed view.
void test_reduce_nothing_summed() {
  const Tensor in = randn({3, 5}, 21, 0.0f, 1.0f);
  double worst = 0.0;
  for (int way = 0; way < 2; way++)
    for (float scale : {1.0f, 0.5f})
      for (bool acc : {false, true}) {
        const Tensor dst = randn({5, 3}, 23, 0.0f, 1.0f);
        const std::vector<float> old(dst->f32(), dst->f32() + 15);
        const Tensor out = make_view(dst, {3, 5}, {1, 3}, 0);  // out(i, j) = dst[j * 3 + i]
        if (way == 0) {
          launch_reduce(out, in, scale, acc);
        } else {
          ReduceArgs r;
          r.nd = 2;
          r.shape[0] = 3, r.shape[1] = 5;
          r.in = in->f32(), r.in_strides[0] = 5, r.in_strides[1] = 1;
          r.out = dst->f32(), r.out_strides[0] = 1, r.out_strides[1] = 3;
          r.scale = scale, r.accumulate = acc;
          cpu_backend().reduce(r);
        }
        for (int64_t i = 0; i < 3; i++)
          for (int64_t j = 0; j < 5; j++) {
            const double want = (acc ? old[j * 3 + i] : 0.0) + static_cast<double>(scale) * in->f32()[i * 5 + j];
            worst = std::max(worst, std::fabs(dst->f32()[j * 3 + i] - want));
          }
      }
  expect(worst < 1e-6, "a reduction that sums nothing: launch_reduce's scaled copy and the backend's reduce, written and "
                       "accumulated into a transposed view (err " + std::to_string(worst) + ")");
}

// Whether an error thrown by one of 100 tasks run through `run` (parallel_for or
// parallel_for_shares) reaches the caller.
bool task_error_reaches_caller(void (*run)(int64_t, FunctionRef<void(int64_t)>)) {
  try {
    run(100, [](int64_t i) {
      if (i == 37) fail(ERROR_ARGUMENT, "boom");
    });
  } catch (const Error&) {
    return true;
  }
  return false;
}

// Shape (core/shape.h) against std::vector<int64_t> under the same random edits, across its
// inline capacity both ways (a heap block taken and given back), with copies and moves of both kinds.
void test_shape() {
  std::mt19937 rng(7);
  bool ok = true;
  Shape s;
  std::vector<int64_t> v;
  auto same = [&] { return s.size() == v.size() && std::equal(s.begin(), s.end(), v.begin()) && s == Shape(v); };
  for (int step = 0; step < 4000 && ok; step++) {
    const int64_t x = static_cast<int64_t>(rng() % 1000) - 500;
    switch (rng() % 9) {
      case 0: case 1: s.push_back(x), v.push_back(x); break;
      case 2: if (!v.empty()) s.pop_back(), v.pop_back(); break;
      case 3: { const size_t at = v.empty() ? 0 : rng() % (v.size() + 1);
                s.insert(s.begin() + at, x), v.insert(v.begin() + static_cast<std::ptrdiff_t>(at), x); break; }
      case 4: if (!v.empty()) { const size_t at = rng() % v.size();
                s.erase(s.begin() + at), v.erase(v.begin() + static_cast<std::ptrdiff_t>(at)); } break;
      case 5: { const size_t n = rng() % 12; s.resize(n, x), v.resize(n, x); break; }
      case 6: { Shape copy(s); Shape moved(std::move(copy)); ok = ok && copy.empty(); s = moved; break; }
      case 7: { Shape other{1, 2, 3, 4, 5, 6, 7, 8, 9}; other = s; Shape moved; moved = std::move(other); s = std::move(moved); break; }
      case 8: { const int64_t ins[3] = {x, x + 1, x + 2}; const size_t at = v.empty() ? 0 : rng() % (v.size() + 1);
                s.insert(s.begin() + at, ins, ins + 3), v.insert(v.begin() + static_cast<std::ptrdiff_t>(at), ins, ins + 3); break; }
    }
    ok = ok && same();
    if (v.size() > 20) s.clear(), v.clear();
  }
  expect(ok, "Shape keeps the values std::vector does through 4000 random edits, inline and on the heap");
  const Shape a{2, 3, 4}, b(std::vector<int64_t>{2, 3, 4}), c(3, 7);
  expect(a == b && a != c && c == Shape({7, 7, 7}) && std::vector<int64_t>(a.begin(), a.end()) == std::vector<int64_t>({2, 3, 4}) && shape_numel(a) == 24,
         "Shape from a list, a vector and a count compare as their values");
}

void test_pool() {
  std::vector<int> hits(1000, 0);
  parallel_for(1000, [&](int64_t i) { hits[i]++; });
  bool ok = true;
  for (int h : hits) ok = ok && h == 1;
  expect(ok, "parallel_for runs every task once");
  expect(task_error_reaches_caller(parallel_for), "an exception in a task reaches the caller");
}

// parallel_for_shares: every task once for any count and pool size, a nested call inline, an
// exception at the caller; and a thread held up in its share's first task has the rest of that
// share taken by the other thread (the held task waits for them; without the taking it would wait
// out its 10 s limit and the check fails).
void test_pool_shares() {
  bool ok = true;
  for (int threads : {1, 2, 3})
    for (int64_t n : {0, 1, 2, 3, 7, 64, 1001}) {
      set_num_threads(threads);
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      for (auto& h : hits) h = 0;
      parallel_for_shares(n, [&](int64_t i) {
        hits[static_cast<size_t>(i)]++;
        if (i == 0) parallel_for_shares(3, [&](int64_t) {});  // nested: runs inline
      });
      for (auto& h : hits) ok = ok && h == 1;
    }
  expect(ok, "parallel_for_shares runs every task once (0 to 1001 tasks, 1 to 3 threads, a nested call)");
  set_num_threads(2);
  expect(task_error_reaches_caller(parallel_for_shares), "an exception in a parallel_for_shares task reaches the caller");
  // Shares of 8 tasks on 2 threads: [0, 4) and [4, 8). Task 0 waits until tasks 1-3 have run.
  std::atomic<int> rest_done{0};
  std::atomic<bool> rest_elsewhere{true};
  std::thread::id holder;
  std::atomic<bool> held{false};
  parallel_for_shares(8, [&](int64_t i) {
    if (i == 0) {
      holder = std::this_thread::get_id();
      held = true;
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (rest_done < 3 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    } else if (i < 4) {
      while (!held) std::this_thread::yield();
      if (std::this_thread::get_id() == holder) rest_elsewhere = false;
      rest_done++;
    }
  });
  set_num_threads(0);
  expect(rest_done == 3 && rest_elsewhere, "parallel_for_shares: the rest of a held-up thread's share is taken by the other");
}

// The pool's use, as the profiler reads it: a region of two tasks, one 30 ms long and one empty,
// on two threads, leaves at least 30 ms of wall time and about 30 ms of busy time (the other
// thread waited): wall * threads - busy is the unused thread time. A region of one task runs
// inline and counts nothing; nothing counts while counting is off.
void test_pool_use() {
  set_num_threads(2);
  const auto sleep_task = [](int64_t t) {
    if (t == 0) std::this_thread::sleep_for(std::chrono::milliseconds(30));
  };
  pool_use_counting(true);
  const PoolUse a = pool_use();
  parallel_for(2, sleep_task);
  const PoolUse b = pool_use();
  parallel_for(1, sleep_task);
  const PoolUse c = pool_use();
  pool_use_counting(false);
  parallel_for(2, sleep_task);
  const PoolUse d = pool_use();
  set_num_threads(0);
  const double wall = (b.wall_ns - a.wall_ns) / 1e6, busy = (b.busy_ns - a.busy_ns) / 1e6;
  expect(wall >= 30.0 && busy >= 30.0 && busy <= wall * 1.05 + 1.0 && 2 * wall - busy >= 29.0,
         "pool use of a 30 ms task beside an empty one: wall " + std::to_string(wall) + " ms, busy " +
             std::to_string(busy) + " ms of thread time");
  expect(c.wall_ns == b.wall_ns && c.busy_ns == b.busy_ns, "a region of one task runs inline and counts no pool use");
  expect(d.wall_ns == c.wall_ns && d.busy_ns == c.busy_ns, "nothing counts while counting is off");
}

// Turns a hang into a failure: unless stopped (or out of scope) within `seconds`, prints
// `failure` and ends the test program.
class Watchdog {
 public:
  Watchdog(std::string failure, int seconds)
      : thread_([this, failure, seconds] {
          for (int i = 0; i < 10 * seconds && !finished_; i++) std::this_thread::sleep_for(std::chrono::milliseconds(100));
          if (!finished_) {
            std::printf("FAIL %s (hang)\n", failure.c_str());
            std::fflush(stdout);
            std::_Exit(1);
          }
        }) {}
  ~Watchdog() { stop(); }
  void stop() {
    finished_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> finished_{false};  // declared before thread_, so set before it starts
  std::thread thread_;
};

// Resizing the pool between regions, thousands of times: a new worker once started from
// generation 0, took the last region for a new one and counted itself out twice, so a later region
// waited for ever (1 run in 3 of this loop hung before the fix). A watchdog turns a hang into a
// failure.
void test_pool_resize() {
  Watchdog watchdog("pool resize: a region never finished", 60);
  // Under emulation (qemu-user runs these tests for arm64) a resize costs ~6 ms, not ~50 us:
  // DUAT_POOL_RESIZES lowers the count there.
  const char* env = std::getenv("DUAT_POOL_RESIZES");
  const int resizes = env ? std::atoi(env) : 20000;
  bool ok = true;
  for (int it = 0; it < resizes && ok; it++) {
    set_num_threads(2 + it % 3);
    std::atomic<int> count{0};
    parallel_for(64, [&](int64_t) { count++; });
    ok = count == 64;
  }
  watchdog.stop();
  set_num_threads(0);
  expect(ok, "resizing the pool between regions " + std::to_string(resizes) + " times: every region runs each task once and ends");
}

// The engine thread: jobs from several threads at once each run once, one at a time, all on one
// thread that is none of theirs; a job that asks for the engine again runs inline (it would wait
// for itself otherwise: the watchdog turns that hang into a failure); an exception reaches the
// caller that asked.
void test_engine_thread() {
  Watchdog watchdog("engine thread: a job never finished", 30);
  std::mutex ids_mutex;
  std::set<std::thread::id> engine_ids, caller_ids;
  std::atomic<int> running{0}, most{0}, runs{0};
  bool nested_inline = true;
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; c++)
    callers.emplace_back([&] {
      {
        std::lock_guard<std::mutex> lock(ids_mutex);
        caller_ids.insert(std::this_thread::get_id());
      }
      for (int j = 0; j < 50; j++)
        run_on_engine([&] {
          const int now = ++running;
          int seen = most.load();
          while (now > seen && !most.compare_exchange_weak(seen, now)) {}
          const std::thread::id self = std::this_thread::get_id();
          run_on_engine([&] {
            if (std::this_thread::get_id() != self) nested_inline = false;
          });
          {
            std::lock_guard<std::mutex> lock(ids_mutex);
            engine_ids.insert(self);
          }
          runs++;
          running--;
        });
    });
  for (auto& t : callers) t.join();
  bool error_reached = false;
  try {
    run_on_engine([] { fail(ERROR_ARGUMENT, "boom"); });
  } catch (const Error& e) {
    error_reached = e.code() == ERROR_ARGUMENT;
  }
  watchdog.stop();
  const bool own_thread = engine_ids.size() == 1 && !caller_ids.count(*engine_ids.begin()) &&
                          *engine_ids.begin() != std::this_thread::get_id();
  expect(runs == 200 && most == 1, "the engine runs 200 jobs from 4 threads each once, one at a time (ran " +
                                       std::to_string(runs.load()) + ", at most " + std::to_string(most.load()) + " at once)");
  expect(own_thread, "every engine job runs on one thread of its own (" + std::to_string(engine_ids.size()) + " threads)");
  expect(nested_inline, "a job that asks for the engine again runs inline");
  expect(error_reached, "an error thrown by an engine job reaches its caller");
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

// ---- core/device_math.h on the CPU: the GPU kernels' formulas against the CPU ops -------------
double max_abs_diff(const float* a, const float* b, int64_t n) {
  double w = 0;
  for (int64_t i = 0; i < n; i++) w = std::max(w, std::fabs(double(a[i]) - b[i]));
  return w;
}

double max_abs_diff_d(const double* a, const float* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

void test_device_math() {
  GradMode no_grad(false);
  // GELU and its derivative.
  const Tensor x = randn({1000}, 7, 0.0f, 2.0f);
  const Tensor y = gelu(x);
  double worst = 0, worst_grad = 0;
  for (int64_t i = 0; i < 1000; i++) {
    const float v = x->f32()[i];
    worst = std::max(worst, std::fabs(double(dm::gelu(v)) - y->f32()[i]));
    const double h = 1e-3, fd = (0.5 * (v + h) * (1 + std::erf((v + h) / std::sqrt(2.0))) -
                                 0.5 * (v - h) * (1 + std::erf((v - h) / std::sqrt(2.0)))) / (2 * h);
    worst_grad = std::max(worst_grad, std::fabs(dm::gelu_grad(v) - fd));
  }
  expect(worst < 1e-5, "device_math gelu matches the CPU op (" + std::to_string(worst) + ")");
  expect(worst_grad < 1e-4, "device_math gelu_grad matches central differences (" + std::to_string(worst_grad) + ")");

  // Attention as the kernel computes it (layout offsets, chunks of 8 keys through the online
  // softmax) against the CPU attention op: B 2, T 19, N 3 branches, H 2 heads, D 8.
  const int64_t B = 2, T = 19, N = 3, H = 2, D = 8, C = H * D;
  const Tensor qkv = randn({B, T, N * 3 * C}, 11, 0.0f, 1.0f);
  const Tensor ref = attention(qkv, H, N);
  std::vector<float> out(B * T * N * C, NAN), lse_chunk(T), lse_single(T);
  const dm::AttnLayout L{T, C, N, H, D};
  const float* q = qkv->f32();
  const float scale = 1.0f / std::sqrt(float(D));
  double lse_gap = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t n = 0; n < N; n++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < T; i++) {
          dm::OnlineSoftmax chunked, single;
          std::vector<double> acc(D, 0.0);
          for (int64_t j0 = 0; j0 < T; j0 += 8) {
            float s[8], w[8], r;
            for (int c = 0; c < 8; c++) {
              s[c] = 0;
              if (j0 + c < T)
                for (int64_t d = 0; d < D; d++)
                  s[c] += q[L.q_offset(b, n, h) + i * L.ld_in() + d] * scale * q[L.k_offset(b, n, h) + (j0 + c) * L.ld_in() + d];
            }
            chunked.add_chunk<8>(s, static_cast<int>(T - j0), &r, w);
            for (int64_t d = 0; d < D; d++) {
              acc[d] *= r;
              for (int c = 0; c < 8 && j0 + c < T; c++) acc[d] += w[c] * q[L.v_offset(b, n, h) + (j0 + c) * L.ld_in() + d];
            }
            for (int c = 0; c < 8 && j0 + c < T; c++) {
              float rs, ws;
              single.add(s[c], &rs, &ws);
            }
          }
          lse_gap = std::max(lse_gap, std::fabs(double(chunked.log_sum_exp()) - single.log_sum_exp()));
          for (int64_t d = 0; d < D; d++) out[L.out_offset(b, n, h) + i * L.ld_out() + d] = float(acc[d] / chunked.l);
        }
  expect(max_abs_diff(out.data(), ref->f32(), ref->numel()) < 1e-5, "device_math attention layout and online softmax match the CPU attention op");
  expect(lse_gap < 1e-5, "device_math online softmax: chunks of 8 and one score at a time agree");

  // LayerNorm of rows from the kernel's formulas against the CPU op, and its dx.
  const int64_t R = 5, K = 37;
  const Tensor lx = randn({R, K}, 13, 2.0f, 1.5f);
  const Tensor ly = layernorm(lx, nullptr, nullptr, 1e-6f);
  const Tensor gy = randn({R, K}, 14, 0.0f, 1.0f);
  double ln_worst = 0, dx_worst = 0;
  for (int64_t r = 0; r < R; r++) {
    const float* row = lx->f32() + r * K;
    double mu = 0, sq = 0;
    for (int64_t c = 0; c < K; c++) mu += row[c];
    mu /= K;
    for (int64_t c = 0; c < K; c++) sq += (row[c] - mu) * (row[c] - mu);
    const float rs = dm::layernorm_rstd(float(sq), K, 1e-6f);
    double mg = 0, mgx = 0;
    for (int64_t c = 0; c < K; c++) {
      const float xh = float((row[c] - mu) * rs);
      ln_worst = std::max(ln_worst, std::fabs(double(xh) - ly->f32()[r * K + c]));
      mg += gy->f32()[r * K + c];
      mgx += gy->f32()[r * K + c] * xh;
    }
    mg /= K;
    mgx /= K;
    // dx against central differences of sum(gy * LN(x)) in float64.
    for (int64_t c = 0; c < K; c++) {
      auto loss = [&](double dv) {
        std::vector<double> v(row, row + K);
        v[c] += dv;
        double m = 0, q2 = 0, l = 0;
        for (double e : v) m += e;
        m /= K;
        for (double e : v) q2 += (e - m) * (e - m);
        const double rr = 1 / std::sqrt(q2 / K + 1e-6);
        for (int64_t k = 0; k < K; k++) l += gy->f32()[r * K + k] * (v[k] - m) * rr;
        return l;
      };
      const double fd = (loss(1e-4) - loss(-1e-4)) / 2e-4;
      const float xh = float((row[c] - mu) * rs);
      dx_worst = std::max(dx_worst, std::fabs(dm::layernorm_dx(gy->f32()[r * K + c], xh, float(mg), float(mgx), rs) - fd));
    }
  }
  expect(ln_worst < 1e-5, "device_math layerNorm statistics match the CPU op");
  expect(dx_worst < 1e-3, "device_math layerNorm dx matches central differences (" + std::to_string(dx_worst) + ")");

  // The optimizer (AdamW from restored state, then SGD with Nesterov momentum) against PyTorch's
  // formulas in float64.
  {
    const Tensor p = randn({50}, 21, 0.0f, 1.0f), g = randn({50}, 22, 0.0f, 1.0f);
    const Tensor m = randn({50}, 23, 0.0f, 0.1f), v = mul(randn({50}, 24, 0.0f, 0.1f), randn({50}, 24, 0.0f, 0.1f));
    std::vector<double> pd(p->f32(), p->f32() + 50), md(m->f32(), m->f32() + 50), vd(v->f32(), v->f32() + 50);
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.05;
    const int64_t step = 3;
    for (int i = 0; i < 50; i++) {
      const double gi = g->f32()[i];
      md[i] = b1 * md[i] + (1 - b1) * gi;
      vd[i] = b2 * vd[i] + (1 - b2) * gi * gi;
      pd[i] = pd[i] * (1 - lr * wd) - lr / (1 - std::pow(b1, step)) * md[i] / (std::sqrt(vd[i] / (1 - std::pow(b2, step))) + eps);
    }
    Optimizer opt(OPTIMIZER_ADAMW, {p}, {0});
    opt.set_state(0, {m, v, step - 1, {}});
    p->grad = g;
    GroupOptions o;
    o.lr = lr, o.weight_decay = wd, o.beta1 = b1, o.beta2 = b2, o.eps = eps;
    opt.step({o});
    const Optimizer::State st = opt.state(0);
    double worst = 0;
    for (int i = 0; i < 50; i++)
      worst = std::max({worst, std::fabs(pd[i] - p->f32()[i]), std::fabs(vd[i] - st.b->f32()[i]) * 100});
    expect(worst < 1e-6 && st.step == step && opt.steps() == 1, "the optimizer's AdamW matches PyTorch's formula in float64 (" + std::to_string(worst) + ")");

    const Tensor q = randn({20}, 25, 0.0f, 1.0f), gq = randn({20}, 26, 0.0f, 1.0f);
    std::vector<double> qd(q->f32(), q->f32() + 20), buf(20);
    Optimizer sgd(OPTIMIZER_SGD, {q}, {0});
    GroupOptions so;
    so.lr = 0.1, so.momentum = 0.9, so.nesterov = true, so.weight_decay = 0.01;
    for (int k = 0; k < 2; k++) {
      q->grad = gq;
      sgd.step({so});
      for (int i = 0; i < 20; i++) {
        const double d = gq->f32()[i] + 0.01 * qd[i];
        buf[i] = k == 0 ? d : 0.9 * buf[i] + d;
        qd[i] -= 0.1 * (d + 0.9 * buf[i]);
      }
    }
    expect(max_abs_diff_d(qd.data(), q->f32(), 20) < 1e-5, "the optimizer's SGD (Nesterov, decay) matches PyTorch's formula");
  }

  // Patch embedding through patch_pixel against the CPU op.
  const int64_t Bi = 2, ch = 3, S = 8, P = 4, E = 5, T1 = (S / P) * (S / P) + 1;
  const Tensor img = randn({Bi, ch, S, S}, 31, 0.0f, 1.0f), w = randn({E, ch, P, P}, 32, 0.0f, 1.0f), bias = randn({E}, 33, 0.0f, 1.0f);
  const Tensor pe = patch_embed(img, w, bias, P);  // (B, T, E), no class token
  double pe_worst = 0;
  for (int64_t b = 0; b < Bi; b++)
    for (int64_t t = 1; t < T1; t++)
      for (int64_t e = 0; e < E; e++) {
        double acc = bias->f32()[e];
        for (int64_t c = 0; c < ch; c++)
          for (int64_t py = 0; py < P; py++)
            for (int64_t px = 0; px < P; px++)
              acc += w->f32()[((e * ch + c) * P + py) * P + px] * img->f32()[dm::patch_pixel(b, c, t, py, px, ch, S, P)];
        pe_worst = std::max(pe_worst, std::fabs(acc - pe->f32()[(b * (T1 - 1) + t - 1) * E + e]));
      }
  expect(pe_worst < 1e-4, "device_math patch_pixel indexes the patches as the CPU patch embedding does");
  expect(dm::stage_combine(1.0f, 2.0f, 3.0f, 0.5f) == 3.5f && dm::ceil_div(7, 2) == 4 && dm::ceil_div(8, 2) == 4,
         "device_math stage_combine and ceil_div");
}

}  // namespace

// The test device: DEVICE_CUDA on host memory, fresh memory poisoned with NaN, host access refused;
// then the GPU parity checks (tests/parity.h) run against it, so they are exercised here.
void test_device() {
  set_test_device(true);
  {
    const Tensor t = empty({4}, DTYPE_F32, DEVICE_CUDA);
    expect_error([&] { t->f32(); }, ERROR_DEVICE, "host access to a tensor on the test device");
    const Tensor h = to_device(t, DEVICE_CPU);
    expect(std::isnan(h->f32()[0]) && std::isnan(h->f32()[3]), "fresh memory of the test device reads as NaN");
    const Tensor z = to_device(zeros({3}, DTYPE_F32, DEVICE_CUDA), DEVICE_CPU);
    expect(z->f32()[0] == 0.0f && z->f32()[2] == 0.0f, "zeros on the test device are zeros");
    bool mixed = false;
    try {
      add(t, zeros({4}));
    } catch (const Error& e) {
      mixed = e.code() == ERROR_DEVICE && std::string(e.what()).find("cuda and cpu") != std::string::npos;
    }
    expect(mixed, "an op over two devices is a DeviceError naming both");
  }
  {
    const Tensor alive = zeros({2}, DTYPE_F32, DEVICE_CUDA);
    expect_error([] { set_test_device(false); }, ERROR_STATE, "switching the test device while a tensor lives on it");
  }
  std::mt19937_64 rng(7);
  parity::Report r;
  r.quiet = true;
  parity::check_all(DEVICE_CUDA, {PRECISION_FP32}, rng, r, true);
  g_passed += r.passed;
  g_failed += r.failed;
  clear_derived_weights();
  set_test_device(false);
}

// dm::strided_offsets, the index arithmetic of the CUDA elementwise and reduction kernels, visits
// the elements of a view in the order and at the offsets of the CPU's strided walk.
void test_strided_offsets() {
  const Shape shape = {3, 4, 5}, s0 = {1, 15, 3}, s1 = {0, 5, 1}, s2 = {20, 5, 1};
  std::vector<int64_t> walk0, walk1;
  for_each_run<2>(shape, {&s0, &s1}, [&](auto off, int64_t n, auto inc) {
    for (int64_t i = 0; i < n; i++) walk0.push_back(off[0] + i * inc[0]), walk1.push_back(off[1] + i * inc[1]);
  });
  bool ok = walk0.size() == 60;
  for (int64_t i = 0; i < 60 && ok; i++) {
    int64_t a, b, c;
    dm::strided_offsets(i, 3, shape.data(), s0.data(), s1.data(), s2.data(), &a, &b, &c);
    ok = a == walk0[i] && b == walk1[i] && c == i;
  }
  expect(ok, "dm::strided_offsets walks views as the CPU does");
}

// A stand-in for a job of two ranks holding the same values: an allreduce doubles them; every
// collective is counted.
class TwinCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string description() const override { return "twin"; }
  void allreduce_sum(float* d, int64_t n) override { twice(d, n); }
  void allreduce_sum(double* d, int64_t n) override { twice(d, n); }
  void broadcast(void*, int64_t, int) override { calls_++; }
  void barrier() override { calls_++; }
  [[noreturn]] void abort(int code) override { std::exit(code); }
  void finalize() override {}
  CommStats stats() const override { return CommStats{calls_, 0, 0.0}; }

 private:
  template <typename T>
  void twice(T* d, int64_t n) {
    calls_++;
    for (int64_t i = 0; i < n; i++) d[i] *= 2;
  }
  int64_t calls_ = 0;
};

double max_diff(const Tensor& a, const Tensor& b) {
  const Tensor x = to_device(a, DEVICE_CPU), y = to_device(b, DEVICE_CPU);
  if (x->shape != y->shape) return INFINITY;
  double m = 0;
  for (int64_t i = 0; i < x->numel(); i++) {
    const double d = std::fabs(static_cast<double>(x->f32()[i]) - y->f32()[i]);
    m = std::isnan(d) ? INFINITY : std::max(m, d);  // (std::max would pass a NaN over)
  }
  return m;
}

// Attention's forward at batch 1 (heads too few to share evenly among 2 threads, a head a task):
// out and lse the same bits on 1, 2 and 3 threads, and near double formulas; tokens filling
// their last vector of 16 queries in part (50, 40, 17, 9) or by one query (49), one branch and
// four.
void test_attention_batch1() {
  const int saved_threads = get_num_threads();
  for (auto [B, T, N, H] : {std::array<int64_t, 4>{1, 50, 1, 3}, {1, 40, 1, 3}, {1, 49, 1, 3}, {1, 17, 1, 3},
                            {1, 9, 3, 1}, {1, 50, 4, 3}}) {
    const int64_t D = 16, C = H * D, W = N * 3 * C;
    const dm::AttnLayout L{T, C, N, H, D};
    const Tensor qkv = randn({B, T, W}, 23, 0.0f, 1.0f);
    const float* x = qkv->f32();
    std::vector<float> out1, lse1;
    const std::string shape = "B=" + std::to_string(B) + " T=" + std::to_string(T) + " N=" + std::to_string(N) +
                              " H=" + std::to_string(H);
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      std::vector<float> out(B * T * N * C, 9.0f), lse(B * N * H * T, 9.0f);
      cpu_backend().attention_forward(L, B, x, out.data(), lse.data());
      if (threads == 1) {
        out1 = out, lse1 = lse;
        double worst = 0.0;
        for (int64_t b = 0; b < B; b++)
          for (int64_t n = 0; n < N; n++)
            for (int64_t h = 0; h < H; h++)
              for (int64_t q = 0; q < T; q++) {
                std::vector<double> s(T);
                double m = -INFINITY, sum = 0.0;
                for (int64_t k = 0; k < T; k++) {
                  double d = 0.0;
                  for (int64_t e = 0; e < D; e++)
                    d += double(x[L.q_offset(b, n, h) + q * W + e]) * x[L.k_offset(b, n, h) + k * W + e];
                  s[k] = d / std::sqrt(double(D)), m = std::max(m, s[k]);
                }
                for (int64_t k = 0; k < T; k++) sum += std::exp(s[k] - m);
                worst = std::max(worst, std::fabs(lse[L.stat_offset(b, n, h) + q] - (m + std::log(sum))));
                for (int64_t e = 0; e < D; e++) {
                  double o = 0.0;
                  for (int64_t k = 0; k < T; k++) o += std::exp(s[k] - m) / sum * x[L.v_offset(b, n, h) + k * W + e];
                  worst = std::max(worst, std::fabs(out[L.out_offset(b, n, h) + q * N * C + e] - o));
                }
              }
        expect(worst < 2e-5, "attention forward " + shape + ": out and lse near double formulas (" + std::to_string(worst) + ")");
      } else {
        expect(out == out1 && lse == lse1, "attention forward " + shape + " on " + std::to_string(threads) +
                                               " threads: the bits of one thread");
      }
    }
  }
  set_num_threads(saved_threads);
}

// attention_first: the first rows of attention's output, on the CPU (its own kernel, which finds
// a column's maximum and sums over keys for 1 to 17 queries, sixteen queries to a vector) and on
// the test device (which, as CUDA, computes every row and keeps the first); its errors.
void test_attention_first() {
  GradMode no_grad(false);
  struct Case { int64_t B, T, N, H, D, queries; };
  for (const Case k : {Case{1, 50, 4, 3, 64, 1}, Case{5, 17, 2, 2, 8, 1}, Case{3, 33, 1, 3, 16, 17}, Case{2, 9, 3, 1, 4, 9}}) {
    for (const Device dev : {DEVICE_CPU, DEVICE_CUDA}) {
      set_test_device(dev == DEVICE_CUDA);
      {
        const Tensor qkv = randn({k.B, k.T, k.N * 3 * k.H * k.D}, 21, 0.0f, 1.0f, dev);
        const Tensor want = contiguous(slice(attention(qkv, k.H, k.N), 1, 0, k.queries, 1));
        const Tensor got = attention_first(qkv, k.H, k.N, k.queries);
        const double d = max_diff(got, want);
        expect(d < 1e-6, "attention_first of " + std::to_string(k.queries) + " of " + std::to_string(k.T) +
                             " queries: the first rows of attention (" + device_name(dev) + ", worst " + std::to_string(d) + ")");
      }
      set_test_device(false);
    }
  }
  const Tensor qkv = randn({2, 5, 12}, 3, 0.0f, 1.0f);
  expect_error([&] { attention_first(qkv, 2, 1, 0); }, ERROR_ARGUMENT, "attention_first of no queries");
  expect_error([&] { attention_first(qkv, 2, 1, 6); }, ERROR_ARGUMENT, "attention_first of more queries than tokens");
  expect_error([&] { attention_first(qkv, 3, 1, 1); }, ERROR_SHAPE, "attention_first with heads that do not divide the width");
  GradMode grad(true);
  const Tensor w = randn({2, 5, 12}, 4, 0.0f, 1.0f);
  w->requires_grad = true;
  expect_error([&] { attention_first(w, 2, 1, 1); }, ERROR_STATE, "attention_first where a gradient would be recorded");
}

// A two-stage model of two branches on 8 x 8 images, its random parameters, five images and
// their labels: the jobs the step tests below compare between devices and ranks.
struct TinyJob {
  ModelConfig c;
  std::vector<Tensor> init;
  Tensor images, labels;
};
TinyJob tiny_job(int64_t mlp_hidden, uint64_t seed) {
  TinyJob j;
  std::mt19937_64 rng(seed);
  j.c.image_size = 8, j.c.patch_size = 4, j.c.classes = 3, j.c.dim = 16, j.c.heads = 2, j.c.depth = 2, j.c.branches = 2;
  j.c.mlp_hidden = mlp_hidden;
  j.init = parity::random_params(j.c, rng);
  j.images = randn({5, 1, 8, 8}, 3, 0.0f, 1.0f);
  j.labels = empty({5}, DTYPE_I32);
  for (int i = 0; i < 5; i++) j.labels->i32()[i] = i % 3;
  return j;
}

// Padded rows (branch.cpp): on the CPU the MLP's interleaved hidden activations whose rows are a
// multiple of 4 KiB are laid out with longer rows. A training step of a stage with such rows (two
// branches of 512) and the GELU's gradient reached from elsewhere (unjoined, its gradient arriving
// contiguous) against the test device, which lays the same rows out unpadded.
void test_padded_rows() {
  using parity::copies;
  const int64_t N = 2, M = 512, R = 30, C = 8;
  const Tensor x = randn({N, R, C}, 31, 0.0f, 1.0f), w1 = randn({N, M, C}, 32, 0.0f, 0.3f), b1 = randn({N, M}, 33, 0.0f, 0.3f);
  const Tensor v = randn({N, R, M}, 34, 0.0f, 1.0f);
  std::vector<Tensor> hs, grads;
  for (const Device dev : {DEVICE_CPU, DEVICE_CUDA}) {
    set_test_device(dev == DEVICE_CUDA);
    const std::vector<Tensor> p = copies({x, w1, b1, v}, dev);
    for (int i = 0; i < 3; i++) p[i]->requires_grad = true;
    const Tensor h = branch_linear(p[0], p[1], p[2], nullptr, nullptr, true, true);
    expect(h->strides[1] == (dev == DEVICE_CPU ? N * M + 256 : N * M),
           std::string("an MLP activation of rows of 4 KiB is padded on the CPU only (row stride ") +
               std::to_string(h->strides[1]) + ")");
    backward(sum(mul(h, p[3]), {}, false), nullptr);
    hs.push_back(to_device(contiguous(h), DEVICE_CPU));
    for (int i = 0; i < 3; i++) grads.push_back(to_device(p[i]->grad, DEVICE_CPU));
  }
  double worst = max_diff(hs[0], hs[1]);
  for (int i = 0; i < 3; i++) worst = std::max(worst, max_diff(grads[i], grads[3 + i]));
  expect(worst < 1e-5, "branch_linear over padded rows, its gradient arriving contiguous: the unpadded values (" +
                           std::to_string(worst) + ")");

  const TinyJob j = tiny_job(512, 12);
  std::vector<StepResult> steps;
  std::vector<std::vector<Tensor>> g;
  for (const Device dev : {DEVICE_CPU, DEVICE_CUDA}) {
    set_test_device(dev == DEVICE_CUDA);
    Model m(j.c, copies(j.init, dev), PRECISION_FP32);
    steps.push_back(train_step(m, j.images, j.labels, nullptr, {}, StepOptions{}));
    g.emplace_back();
    for (const Tensor& t : m.params()) g.back().push_back(to_device(t->grad, DEVICE_CPU));
  }
  worst = 0;
  for (size_t i = 0; i < j.init.size(); i++) worst = std::max(worst, max_diff(g[0][i], g[1][i]));
  expect(std::fabs(steps[0].loss - steps[1].loss) < 1e-5 && worst < 1e-5,
         "a training step over padded rows: the unpadded loss and gradients (worst " + std::to_string(worst) + ")");
  clear_derived_weights();
  set_test_device(false);
}

// On a job of two twins, a data-parallel step is the single step (each twin's half of the weight
// doubled), and a branch-parallel model whose two shares are the same N branches is the whole
// model with those branches twice: same logits, loss, norm and gradients. On the CPU and on the
// test device, whose tensors the communicator reduces through the host.
void test_distributed_step() {
  using parity::copies;
  install_communicator(std::make_unique<TwinCommunicator>());
  Communicator& comm = *communicator();
  for (const Device dev : {DEVICE_CPU, DEVICE_CUDA}) {
    set_test_device(dev == DEVICE_CUDA);
    const std::string on = dev == DEVICE_CPU ? " (cpu)" : " (test device)";
    const TinyJob j = tiny_job(24, 11);
    const ModelConfig& c = j.c;
    const std::vector<Tensor>& init = j.init;
    const Tensor &x = j.images, &y = j.labels;
    StepOptions o;
    o.label_smoothing = 0.1f;
    Model single(c, copies(init, dev), PRECISION_FP32), data(c, copies(init, dev), PRECISION_FP32);
    const StepResult a = train_step(single, x, y, nullptr, {}, o);
    o.data_parallel = true;
    const int64_t calls = comm.stats().calls;
    const StepResult b = train_step(data, x, y, nullptr, {}, o);
    expect(comm.stats().calls - calls == 2, "a data-parallel step is one bucketed allreduce (and the batch size)" + on);
    double worst = 0;
    for (size_t i = 0; i < init.size(); i++) worst = std::max(worst, max_diff(single.params()[i]->grad, data.params()[i]->grad));
    expect(std::fabs(a.loss - b.loss) < 1e-6 && b.correct == 2 * a.correct && std::fabs(a.grad_norm - b.grad_norm) < 1e-5 &&
               worst < 1e-6,
           "data parallel on twin ranks: the single step's loss, norm and gradients" + on);

    // The whole model: every stage's branches [share; share].
    ModelConfig whole_c = c, part_c = c;
    whole_c.branches = 4;
    part_c.branch_parallel = true;
    std::vector<Tensor> whole_init;
    for (size_t i = 0; i < init.size(); i++)
      whole_init.push_back(model_branch_params(c).contains(i) ? concat({init[i], init[i]}, 0) : init[i]);
    Model whole(whole_c, copies(whole_init, dev), PRECISION_FP32), part(part_c, copies(init, dev), PRECISION_FP32);
    {
      GradMode no_grad(false);
      expect(max_diff(whole.forward(x), part.forward(x)) < 1e-5, "branch parallel on twin ranks: the whole model's logits" + on);
      // (whole's forward computes its last stage for the class token alone; a branch-parallel
      // stage every token: its ranks sum every row.)
      expect_error([&] { stage_forward(randn({5, 5, 16}, 1, 0.0f, 1.0f, dev), part.structured().stages[0], part_c, true); },
                   ERROR_ARGUMENT, "the class token alone of a branch-parallel stage" + on);
    }
    o.data_parallel = false;
    const StepResult w = train_step(whole, x, y, nullptr, {}, o);
    const StepResult p = train_step(part, x, y, nullptr, {}, o);
    worst = 0;
    for (size_t i = 0; i < init.size(); i++) {
      const Tensor gw = whole.params()[i]->grad, gp = part.params()[i]->grad;
      worst = std::max(worst, model_branch_params(c).contains(i) ? max_diff(slice(gw, 0, 0, 2, 1), gp) : max_diff(gw, gp));
    }
    expect(std::fabs(w.loss - p.loss) < 1e-6 && w.correct == p.correct && std::fabs(w.grad_norm - p.grad_norm) < 1e-4 &&
               worst < 1e-5,
           "branch parallel on twin ranks: the whole model's loss, norm and gradients (worst " + std::to_string(worst) + ")" + on);
  }
  set_test_device(false);
  distributed_finalize();
  expect(communicator() == nullptr, "finalize drops the communicator");
  expect_error([] { distributed_init_mpi(""); }, ERROR_DISTRIBUTED, "a second job after finalize");
}

int main() {
  for (int isa = 0; isa <= cpu_isa_best(); isa++) test_gemm(static_cast<CpuIsa>(isa));
  test_adamw_kernel();
  test_column_softmax_kernels();
  test_small_then();
  test_attention_bias_sums();
  test_accumulate_rows();
  test_layernorm_rows_kernel();
  test_layernorm_backward_kernel();
  test_layernorm_residual_backward();
  test_stage_combine_kernel();
  test_fold_affine_rows();
  test_fold_affine_backward();
  test_math_avx512();
  test_gelu_rows();
  test_gemm_bf16();
  test_amx_refused();
  // On one thread, where a product's packed B is cut into one chunk per K block when C fits in L2
  // beside it (gemm.cpp, c_in_l2), and no split of K: the same checks.
  set_num_threads(1);
  g_context = " (one thread)";
  test_gemm(cpu_isa_best());
  test_gemm_bf16();
  g_context.clear();
  set_num_threads(0);
  test_micro_gflops();
  cpu_isa_set(cpu_isa_best());
  // bf16 products on vdpbf16ps where they would run on AMX tiles (above): the GELU output's and
  // the streamed C's checks of test_gemm.
  if (cpu_has_amx()) {
    const bool amx_was = cpu_amx_active();
    cpu_amx_set(false);
    g_context = " (vdpbf16ps, not AMX)";
    test_gemm(CPU_ISA_AVX512);
    g_context.clear();
    cpu_amx_set(amx_was);
  }
  // Every walk of the packed path (gemm.h, GemmTuning), besides the one this CPU's vendor sets
  // (checked above): the same checks, and the same bits as each other.
  const GemmTuning tuning = gemm_tuning();
  for (const GemmTuning& t : {GEMM_TUNING_AMD, GEMM_TUNING_INTEL, GemmTuning{true, false, 96}}) {
    if (std::strcmp(gemm_tuning_name(t), gemm_tuning_name(tuning)) == 0) continue;
    gemm_tuning_set(t);
    g_context = std::string(" (") + gemm_tuning_name(t) + " tuning)";
    test_gemm(cpu_isa_best());
    if (cpu_isa_best() == CPU_ISA_AVX512) test_gemm(CPU_ISA_AVX2);
    test_gemm_gelu_backward();
  }
  g_context.clear();
  gemm_tuning_set(tuning);
  for (int isa = 0; isa <= cpu_isa_best(); isa++) test_gemm_tunings_same_bits(static_cast<CpuIsa>(isa));
  for (int isa = 0; isa <= cpu_isa_best(); isa++) test_gemm_packed_b(static_cast<CpuIsa>(isa));
  test_packed_weights();
  test_lasting_blocks();
  for (int isa = 0; isa <= cpu_isa_best(); isa++) test_gemm_row_norm(static_cast<CpuIsa>(isa));
  test_branch_linear_normed();
  test_attention_first();
  test_attention_batch1();
  cpu_isa_set(cpu_isa_best());
  test_math();
  test_autograd_fanout();
  test_autograd_fanout_accumulates_in_kernels();
  test_shape();
  test_pool();
  test_pool_shares();
  test_pool_use();
  test_pool_resize();
  test_engine_thread();
  test_split_k_parts_across_pool_sizes();
  test_products_on_several_threads();
  test_backward_frees_as_it_goes();
  test_gelu_backward_in_place();
  test_gelu_backward_bias();
  test_sgemm_row_blocks();
  test_gemm_gelu_backward();
  test_gelu_link();
  test_padded_rows();
  test_gelu_maps();
  test_reduce_nothing_summed();
  test_memory();
  test_device_math();
  test_strided_offsets();
  test_device();
  test_distributed_step();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
