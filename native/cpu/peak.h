// peak.h: the machine's arithmetic limit, measured (chains of independent FMAs on every thread
// of the pool), so benchmarks report efficiency against this CPU rather than a datasheet. Some
// CPUs execute a 512-bit FMA as two 256-bit halves, others at full width: measure, never assume.
#pragma once
#include <cstdint>
#include <functional>

namespace duat {

enum PeakKind : int {
  PEAK_FP32_AVX2 = 0,    // 256-bit vfmadd231ps: 16 FLOPs per instruction
  PEAK_FP32_AVX512 = 1,  // 512-bit vfmadd231ps: 32 FLOPs
  PEAK_BF16_AVX512 = 2,  // vdpbf16ps: 16 lanes x 2 bf16 products summed into fp32, 64 FLOPs
  PEAK_BF16_AMX = 3,     // tdpbf16ps on 16 x 16 fp32 tiles, 32 bf16 deep: 16384 FLOPs
};

bool peak_supported(PeakKind kind);
// GFLOP/s over `threads` pool threads (0 = the pool's size), timed for about `seconds`.
// Throws ERROR_ARGUMENT when the CPU lacks the instructions.
double measure_peak_gflops(PeakKind kind, int threads, double seconds);

// How both of the rate measurements here time their work (this one and sgemm_micro_gflops in
// gemm.h): doubles *iters (from its value) until run(*iters) takes a tenth of `seconds`, then
// returns the fastest of five timed runs of *iters, in seconds (a shared machine only ever slows a
// run down). Throws ERROR_ARGUMENT unless seconds is in (0, 60].
double best_run_seconds(const std::function<void(int64_t)>& run, double seconds, int64_t* iters);

}  // namespace duat
