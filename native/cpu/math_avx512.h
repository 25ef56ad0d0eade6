// math_avx512.h: math.h's exp, and its table GELU and GELU derivative (gelu_table,
// gelu_grad_table), sixteen lanes at a time (AVX-512): the same formulas and the same operations
// in the same order as GCC vectorises the scalar ones (the same bits; a C++ test holds them to
// it), for the kernels where the compiler's own vectorisation is slow: it turns the clamps into
// masks that every later step then carries, and the tables into gathers.
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

// math.h's gelu_table_lookup, sixteen lanes: the six coefficients of each lane's interval picked
// by permutes from the table's rows (one 16-float vector each).
DUAT_AVX512_INLINE __m512 gelu_table_lookup_avx512(const float (&c)[6][16], float top, __m512 x) {
  const __m512 t = _mm512_min_ps(_mm512_set1_ps(top), _mm512_abs_ps(x));  // NaN stays (min's 2nd)
  const __m512 s = _mm512_mul_ps(t, _mm512_set1_ps(16.0f / top));
  const __m512i k = _mm512_min_epi32(_mm512_cvttps_epi32(s), _mm512_set1_epi32(15));
  const __m512 u = _mm512_sub_ps(s, _mm512_cvtepi32_ps(k));
  __m512 p = _mm512_permutexvar_ps(k, _mm512_load_ps(c[5]));
  p = _mm512_fmadd_ps(p, u, _mm512_permutexvar_ps(k, _mm512_load_ps(c[4])));
  p = _mm512_fmadd_ps(p, u, _mm512_permutexvar_ps(k, _mm512_load_ps(c[3])));
  p = _mm512_fmadd_ps(p, u, _mm512_permutexvar_ps(k, _mm512_load_ps(c[2])));
  p = _mm512_fmadd_ps(p, u, _mm512_permutexvar_ps(k, _mm512_load_ps(c[1])));
  p = _mm512_fmadd_ps(p, u, _mm512_permutexvar_ps(k, _mm512_load_ps(c[0])));
  const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_sub_ps(p, negative, _mm512_set1_ps(1.0f), p);
}

// gelu: x * Phi(x) (math.h's gelu_table).
DUAT_AVX512_INLINE __m512 gelu_avx512(__m512 x) {
  return _mm512_mul_ps(x, gelu_table_lookup_avx512(GELU_CDF, GELU_CDF_TOP, x));
}

// gelu_grad: Phi(x) + x * phi(x) (math.h's gelu_grad_table).
DUAT_AVX512_INLINE __m512 gelu_grad_avx512(__m512 x) { return gelu_table_lookup_avx512(GELU_GRAD, GELU_GRAD_TOP, x); }

#undef DUAT_AVX512_INLINE

}  // namespace duat

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif
