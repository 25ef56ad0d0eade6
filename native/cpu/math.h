// math.h: scalar float math shared by the CPU kernels (and usable from CUDA: DUAT_HD).
// Branch-free, so loops over them vectorise. Accuracy: exp within 2 ulp on [-87, 88];
// erf within 4e-7 absolute (checked against std::erf in native/tests).
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

}  // namespace duat
