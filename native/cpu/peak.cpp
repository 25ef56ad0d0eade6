// peak.cpp: chain-of-FMAs microbenchmarks (peak.h). Each thread runs independent accumulator
// chains, at least the FMA latency times the issue width of any current x86 core,
// so the units, not the dependencies, set the pace. Operands stay in registers: no memory traffic.
#include "peak.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>

#include "../core/errors.h"
#include "../core/parallel.h"
#include "amx.h"
#include "bf16.h"
#include "gemm.h"

namespace duat {

namespace {
constexpr int CHAINS = 16;       // AVX-512: 32 registers hold the chains and the operands
constexpr int CHAINS_AVX2 = 12;  // AVX2 has 16: more chains would spill
constexpr int AMX_CHAINS = 6;    // tiles of sums (bf16_amx)

#if defined(__x86_64__)
// Returns a value that depends on every chain, so the compiler keeps all of them.
__attribute__((target("avx2,fma"))) float fp32_avx2(int64_t iters) {
  __m256 acc[CHAINS_AVX2];
  for (int i = 0; i < CHAINS_AVX2; i++) acc[i] = _mm256_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS_AVX2; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < CHAINS_AVX2; i++) s = _mm256_add_ps(s, acc[i]);
  return _mm256_cvtss_f32(s);
}

__attribute__((target("avx512f"))) float fp32_avx512(int64_t iters) {
  __m512 acc[CHAINS];
  for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 16
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < CHAINS; i++) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, s);
  return lanes[0] + lanes[15];
}

__attribute__((target("avx512f,avx512bf16"))) float bf16_avx512(int64_t iters) {
  __m512 acc[CHAINS];
  for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m512i a = _mm512_set1_epi32(0x3A833A83), b = _mm512_set1_epi32(0x38D238D2);  // bf16 pairs ~1e-3, ~1e-4
  for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 16
    for (int i = 0; i < CHAINS; i++) acc[i] = dpbf16(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < CHAINS; i++) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, s);
  return lanes[0] + lanes[15];
}

// Six tiles of sums (tmm0-5) fed by one A and one B tile (tmm6, tmm7), loaded once.
float bf16_amx(int64_t iters) {
  alignas(64) uint32_t a[16][16], b[16][16];
  std::fill(&a[0][0], &a[0][0] + 256, 0x3A833A83u);  // bf16 pairs ~1e-3 and ~1e-4, as bf16_avx512's
  std::fill(&b[0][0], &b[0][0] + 256, 0x38D238D2u);
  alignas(64) float out[16][16];
  amx_load_config();
  DUAT_TILELOAD(6, &a[0][0], 64);
  DUAT_TILELOAD(7, &b[0][0], 64);
  DUAT_TILEZERO(0);
  DUAT_TILEZERO(1);
  DUAT_TILEZERO(2);
  DUAT_TILEZERO(3);
  DUAT_TILEZERO(4);
  DUAT_TILEZERO(5);
  for (int64_t it = 0; it < iters; it++) {
    DUAT_TDP(0, 6, 7);
    DUAT_TDP(1, 6, 7);
    DUAT_TDP(2, 6, 7);
    DUAT_TDP(3, 6, 7);
    DUAT_TDP(4, 6, 7);
    DUAT_TDP(5, 6, 7);
  }
  DUAT_TILESTORE(0, &out[0][0], 64);
  amx_release();
  return out[0][0];
}

#endif

constexpr double FLOPS_PER_INSTRUCTION[] = {16, 32, 64, 16.0 * 16 * 32 * 2};
constexpr int CHAINS_OF[] = {CHAINS_AVX2, CHAINS, CHAINS, AMX_CHAINS};

float run(PeakKind kind, int64_t iters) {
#if defined(__x86_64__)
  switch (kind) {
    case PEAK_FP32_AVX2: return fp32_avx2(iters);
    case PEAK_FP32_AVX512: return fp32_avx512(iters);
    case PEAK_BF16_AVX512: return bf16_avx512(iters);
    case PEAK_BF16_AMX: return bf16_amx(iters);
  }
#endif
  (void)kind;
  (void)iters;
  return 0.0f;
}

double seconds_of(const std::function<void(int64_t)>& run, int64_t iters) {
  const auto t0 = std::chrono::steady_clock::now();
  run(iters);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

double best_run_seconds(const std::function<void(int64_t)>& run, double seconds, int64_t* iters) {
  DUAT_CHECK(seconds > 0 && seconds <= 60, ERROR_ARGUMENT, "rate measurement: seconds must be in (0, 60]");
  while (seconds_of(run, *iters) < seconds / 10 && *iters < (int64_t{1} << 40)) *iters *= 2;
  double best = 1e300;
  for (int r = 0; r < 5; r++) best = std::min(best, seconds_of(run, *iters));
  return best;
}

bool peak_supported(PeakKind kind) {
  const CpuIsa isa = cpu_isa_best();
  switch (kind) {
    case PEAK_FP32_AVX2: return isa >= CPU_ISA_AVX2;
    case PEAK_FP32_AVX512: return isa >= CPU_ISA_AVX512;
    case PEAK_BF16_AVX512: return cpu_has_bf16();
    case PEAK_BF16_AMX: return cpu_has_amx();
    default: return false;
  }
}

double measure_peak_gflops(PeakKind kind, int threads, double seconds) {
  DUAT_CHECK(kind >= PEAK_FP32_AVX2 && kind <= PEAK_BF16_AMX, ERROR_ARGUMENT, "unknown peak kind");
  DUAT_CHECK(peak_supported(kind), ERROR_ARGUMENT, "this CPU lacks the instructions of this peak measurement");
  DUAT_CHECK(seconds > 0 && seconds <= 60, ERROR_ARGUMENT, "peak measurement: seconds must be in (0, 60]");
  if (threads <= 0) threads = get_num_threads();
  threads = std::min(threads, get_num_threads());
  // `iters` iterations on `threads` threads at once (the slowest thread sets the time).
  std::atomic<int64_t> sink{0};
  int64_t iters = 1 << 14;
  const double best = best_run_seconds(
      [&](int64_t n) { parallel_for(threads, [&](int64_t) { sink += run(kind, n) > 1e30f ? 1 : 0; }); }, seconds, &iters);
  return static_cast<double>(iters) * CHAINS_OF[kind] * FLOPS_PER_INSTRUCTION[kind] * threads / best / 1e9;
}

}  // namespace duat
