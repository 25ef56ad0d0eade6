// math_avx512.h: math.h's exp, erf, GELU and GELU's derivative sixteen lanes at a time
// (AVX-512): the same formulas and the same operations in the same order as GCC vectorises the
// scalar ones (the same bits; a C++ test holds them to it), for the kernels where the compiler's
// own vectorisation is slow: it turns the clamps into masks that every later step then carries.
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>

#include "math.h"

// GCC 12 sees the intrinsics' undefined-register idiom (_mm512_undefined_ps in min, max and the
// conversions) as a maybe-uninitialized read wherever these functions are inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace duat {

#define DUAT_AVX512_INLINE __attribute__((target("avx512f"), always_inline)) inline

// fast_exp: clamped to the float range, n = round(x / ln2), a degree-6 polynomial of the rest.
DUAT_AVX512_INLINE __m512 exp_avx512(__m512 x) {
  __m512 xc = _mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f));
  xc = _mm512_max_ps(xc, _mm512_set1_ps(-87.3365447504f));
  const __m512 round = _mm512_set1_ps(12582912.0f);
  const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), round), round);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  const __m512i scale = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
  const __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(scale));
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);  // NaN stays NaN
}

// fast_erf: an odd/even rational function of x clamped to [-4, 4].
DUAT_AVX512_INLINE __m512 erf_avx512(__m512 a) {
  __m512 x = _mm512_min_ps(a, _mm512_set1_ps(4.0f));
  x = _mm512_max_ps(x, _mm512_set1_ps(-4.0f));
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(-2.72614225801306e-10f);
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(2.77068142495902e-08f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-2.10102402082508e-06f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-5.69250639462346e-05f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-7.34990630326855e-04f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-2.95459980854025e-03f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-1.60960333262415e-02f));
  p = _mm512_mul_ps(p, x);
  __m512 q = _mm512_set1_ps(-1.45660718464996e-05f);
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-2.13374055278905e-04f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-1.68282697438203e-03f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-7.37332916720468e-03f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-1.42647390514189e-02f));
  const __m512 y = _mm512_div_ps(p, q);
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
}

// gelu: x * Phi(x).
DUAT_AVX512_INLINE __m512 gelu_avx512(__m512 x) {
  const __m512 e = erf_avx512(_mm512_mul_ps(x, _mm512_set1_ps(INV_SQRT2)));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// gelu_grad: Phi(x) + x * phi(x).
DUAT_AVX512_INLINE __m512 gelu_grad_avx512(__m512 x) {
  const __m512 e = erf_avx512(_mm512_mul_ps(x, _mm512_set1_ps(INV_SQRT2)));
  const __m512 g = exp_avx512(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(-0.5f), x), x));
  const __m512 density = _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(INV_SQRT_2PI)), g);
  return _mm512_fmadd_ps(_mm512_set1_ps(0.5f), _mm512_add_ps(_mm512_set1_ps(1.0f), e), density);
}

#undef DUAT_AVX512_INLINE

}  // namespace duat

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif
