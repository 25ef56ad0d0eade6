// math.h: scalar float math shared by the CPU kernels (and usable from CUDA: DUAT_HD, all but the
// GELU tables). Branch-free (the table GELU but for its NaN check), so loops over them vectorise.
// Accuracy: exp within 2 ulp on [-87, 88]; erf within 4e-7 absolute; the AVX-512 GELU's tables
// within 1.8e-7 (checked against std::erf in native/tests).
#pragma once
#include <cstdint>
#include <cstring>

#include "../core/device_math.h"  // DUAT_HD

namespace duat {

constexpr float INV_SQRT2 = 0.70710678118654752f;
constexpr float INV_SQRT_2PI = 0.39894228040143268f;

DUAT_HD float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// e^x by range reduction x = n ln2 + r, |r| <= ln2/2, and a degree-6 polynomial (Cephes).
// Compile without -ffast-math: the rounding step below must not be reassociated away.
// Inputs are clamped to the float range; NaN propagates.
DUAT_HD float fast_exp(float x) {
  float xc = x > 88.3762626647949f ? 88.3762626647949f : x;
  xc = xc < -87.3365447504f ? -87.3365447504f : xc;
  // n = round(x / ln2): adding and subtracting 1.5 * 2^23 rounds to an integer with plain
  // arithmetic (no floor call), so the loop vectorises on every instruction set.
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  const float y = p * scale;
  return x != x ? x : y;
}

// erf(x) as an odd/even rational function on [-4, 4] (outside, erf is +-1 in float).
DUAT_HD float fast_erf(float a) {
  const float x = a > 4.0f ? 4.0f : (a < -4.0f ? -4.0f : a);
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  p = p * x;
  float q = -1.45660718464996e-05f;
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  const float y = p / q;
  return a != a ? a : y;
}

// GELU, erf form: x * Phi(x).
DUAT_HD float gelu(float x) { return 0.5f * x * (1.0f + fast_erf(x * INV_SQRT2)); }

// d gelu / dx = Phi(x) + x * phi(x).
DUAT_HD float gelu_grad(float x) {
  return 0.5f * (1.0f + fast_erf(x * INV_SQRT2)) + x * INV_SQRT_2PI * fast_exp(-0.5f * x * x);
}

// The AVX-512 kernels' GELU and its derivative (math_avx512.h) are lookups instead: with
// t = |x| clamped to [0, top], s = t * 16 / top, interval k = min(int(s), 15) and u = s - k in
// [0, 1], Phi(t) and Phi(t) + t phi(t) are degree-5 polynomials in u, one per interval, whose
// coefficients the kernels pick with one permute each (sixteen intervals: one vector); both are
// symmetric about 1/2: Phi(-t) = 1 - Phi(t) and gelu'(-t) = 1 - gelu'(t). The last interval is
// exactly 1, so far tails give gelu(x) = 0 or x and gelu'(x) = 0 or 1 exactly. Within 8e-8 (Phi)
// and 1.8e-7 (gelu') of exact, against 2e-7 for fast_erf's Phi; half the arithmetic of the erf
// and exp forms, which the other instruction sets keep (they would need gathers). The forms below
// are the definition: math_avx512.h computes the same operations, and a C++ test holds its lanes
// to these bits.
constexpr float GELU_CDF_TOP = 5.6f, GELU_GRAD_TOP = 6.4f;
// GELU_CDF: degree-5 polynomials on sixteen intervals of [0, 5.6] (scripts/gelu-tables.py; worst
// |error| 7.6e-08 in float32), [power of u][interval].
alignas(64) inline constexpr float GELU_CDF[6][16] = {
    {5.000000000e-01f, 6.368306279e-01f, 7.580363750e-01f, 8.531409502e-01f,
     9.192433357e-01f, 9.599408507e-01f, 9.821355939e-01f, 9.928572178e-01f,
     9.974448681e-01f, 9.991836548e-01f, 9.997673631e-01f, 9.999409318e-01f,
     9.999866486e-01f, 9.999973178e-01f, 9.999995232e-01f, 1.000000000e+00f},
    {1.396296918e-01f, 1.313338727e-01f, 1.092886552e-01f, 8.045867831e-02f,
     5.240468308e-02f, 3.019717708e-02f, 1.539434027e-02f, 6.943101529e-03f,
     2.770401305e-03f, 9.779742686e-04f, 3.054263070e-04f, 8.438750956e-05f,
     2.062723615e-05f, 4.460601303e-06f, 8.533622236e-07f, 0.000000000e+00f},
    {1.010118694e-06f, -8.041668683e-03f, -1.338563021e-02f, -1.478357520e-02f,
     -1.283982396e-02f, -9.249008261e-03f, -5.658214912e-03f, -2.977126744e-03f,
     -1.357436879e-03f, -5.389557336e-04f, -1.869536500e-04f, -5.679166861e-05f,
     -1.513417556e-05f, -3.542643753e-06f, -7.291787369e-07f, 0.000000000e+00f},
    {-2.854574239e-03f, -2.363040578e-03f, -1.147119794e-03f, 1.653099025e-04f,
     1.029793872e-03f, 1.276211813e-03f, 1.075118314e-03f, 7.103151875e-04f,
     3.866588522e-04f, 1.775136770e-04f, 6.963813212e-05f, 2.353499985e-05f,
     6.889772067e-06f, 1.753861170e-06f, 3.893312908e-07f, 0.000000000e+00f},
    {6.354504876e-06f, 2.549706551e-04f, 3.605344391e-04f, 2.927027235e-04f,
     1.316769194e-04f, -1.457052258e-05f, -8.790104766e-05f, -9.363897698e-05f,
     -6.672152085e-05f, -3.689623554e-05f, -1.667607285e-05f, -6.315604878e-06f,
     -2.032852535e-06f, -5.611344704e-07f, -1.336450453e-07f, 0.000000000e+00f},
    {4.816790170e-05f, 2.156976552e-05f, -1.184227312e-05f, -3.072132677e-05f,
     -2.882897206e-05f, -1.507411980e-05f, -1.732609007e-06f, 5.029532076e-06f,
     5.876181604e-06f, 4.087243724e-06f, 2.135445357e-06f, 8.979205859e-07f,
     3.134674387e-07f, 9.242646826e-08f, 2.326334680e-08f, 0.000000000e+00f},
};
// GELU_GRAD: degree-5 polynomials on sixteen intervals of [0, 6.4] (scripts/gelu-tables.py; worst
// |error| 1.7e-07 in float32), [power of u][interval].
alignas(64) inline constexpr float GELU_GRAD[6][16] = {
    {5.000000596e-01f, 8.027299047e-01f, 1.019897938e+00f, 1.117953539e+00f,
     1.122673988e+00f, 1.085231781e+00f, 1.045549393e+00f, 1.019608140e+00f,
     1.006941915e+00f, 1.002043724e+00f, 1.000503659e+00f, 1.000104308e+00f,
     1.000018239e+00f, 1.000002742e+00f, 1.000000358e+00f, 1.000000000e+00f},
    {3.191517293e-01f, 2.710426450e-01f, 1.575904042e-01f, 4.349907860e-02f,
     -2.484420687e-02f, -4.319199547e-02f, -3.368169069e-02f, -1.849097386e-02f,
     -7.858170196e-03f, -2.682595281e-03f, -7.494147285e-04f, -1.731763041e-04f,
     -3.332879714e-05f, -5.366974619e-06f, -7.255280821e-07f, 0.000000000e+00f},
    {2.012582809e-05f, -4.521114752e-02f, -6.227655709e-02f, -4.773678631e-02f,
     -2.046566829e-02f, -8.039515706e-06f, 7.570615038e-03f, 6.813377608e-03f,
     3.810648806e-03f, 1.579196076e-03f, 5.135639803e-04f, 1.346113859e-04f,
     2.886540460e-05f, 5.111225164e-06f, 7.520454233e-07f, 0.000000000e+00f},
    {-1.709734835e-02f, -1.158153079e-02f, 1.387956145e-04f, 8.350503631e-03f,
     8.799189702e-03f, 4.641019274e-03f, 7.391368854e-04f, -9.132073610e-04f,
     -9.545888752e-04f, -5.311779096e-04f, -2.099071571e-04f, -6.372642383e-05f,
     -1.538365905e-05f, -3.008580052e-06f, -4.821968673e-07f, 0.000000000e+00f},
    {1.270689972e-04f, 2.869833028e-03f, 2.970094560e-03f, 9.631401626e-04f,
     -8.410002338e-04f, -1.220238279e-03f, -6.792442873e-04f, -1.232784416e-04f,
     1.012711728e-04f, 1.041475844e-04f, 5.344014062e-05f, 1.911770232e-05f,
     5.200385203e-06f, 1.116854150e-06f, 1.932777280e-07f, 0.000000000e+00f},
    {5.282208440e-04f, 4.824555435e-05f, -3.669894068e-04f, -3.554898722e-04f,
     -9.055559349e-05f, 9.679429058e-05f, 1.099808796e-04f, 4.789196100e-05f,
     2.633042868e-06f, -9.659242096e-06f, -6.997527180e-06f, -2.939747901e-06f,
     -8.861261449e-07f, -2.051033334e-07f, -3.763707213e-08f, 0.000000000e+00f},
};

// Phi(x) (table GELU_CDF) or gelu'(x) (GELU_GRAD) by the lookup above; NaN propagates (checked
// first: a NaN converted to int is undefined in C++). Host code only: the tables live in host
// memory (the CUDA kernels use device_math.h's erff form).
inline __attribute__((always_inline)) float gelu_table_lookup(const float (&c)[6][16], float top, float x) {
  if (x != x) return x;
  const float a = fabsf(x);
  const float t = top < a ? top : a;
  const float s = t * (16.0f / top);
  const int k = static_cast<int>(s) < 15 ? static_cast<int>(s) : 15;
  const float u = s - static_cast<float>(k);
  float p = c[5][k];
  p = p * u + c[4][k];
  p = p * u + c[3][k];
  p = p * u + c[2][k];
  p = p * u + c[1][k];
  p = p * u + c[0][k];
  return x < 0.0f ? 1.0f - p : p;
}
inline __attribute__((always_inline)) float gelu_table(float x) {
  return x * gelu_table_lookup(GELU_CDF, GELU_CDF_TOP, x);
}
inline __attribute__((always_inline)) float gelu_grad_table(float x) {
  return gelu_table_lookup(GELU_GRAD, GELU_GRAD_TOP, x);
}

}  // namespace duat
