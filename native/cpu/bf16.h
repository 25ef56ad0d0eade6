// bf16.h: acc += the products of bf16 pairs (vdpbf16ps: 16 fp32 lanes, each the sum of its two
// bf16 products), on __m512i operands. Inline assembly rather than _mm512_dpbf16_ps: the
// intrinsic's bf16 vector type crashes the clang 17 of zig 0.12, which builds the release binaries.
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>

namespace duat {

__attribute__((target("avx512f,avx512bf16"), always_inline)) inline __m512 dpbf16(__m512 acc, __m512i a, __m512i b) {
  __asm__("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

}  // namespace duat
#endif
