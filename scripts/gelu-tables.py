#!/usr/bin/env python3
"""Generates the piecewise polynomials of the AVX-512 GELU (native/cpu/math.h, GELU_CDF and GELU_GRAD).

The AVX-512 GELU and its derivative are even-symmetric lookups: with t = |x| clamped to [0, TOP],
the interval k = floor(t * 16 / TOP) (at most 15) and u = t * 16 / TOP - k in [0, 1],

  Phi(t)           = Phi_k(u)   (the normal CDF; gelu(x) = x * Phi(x), Phi(-t) = 1 - Phi(t))
  Phi(t) + t phi(t) = h_k(u)    (gelu'(x);  gelu'(-t) = 1 - gelu'(t))

each a degree-5 polynomial whose six coefficients of the sixteen intervals sit in one 16-float
vector each (one permute a coefficient, no gathers). Fitted in double precision (Chebyshev least
squares on u), rounded to float32, and checked here in float32 arithmetic against math.erf:
the printed errors are what native/tests/test_core.cpp holds the kernels to.

Usage: .venv/bin/python scripts/gelu-tables.py  (numpy; prints the C++ to paste into math.h)
"""
import math

import numpy as np

INTERVALS, DEGREE = 16, 5
CDF_TOP, GRAD_TOP = 5.6, 6.4


def phi_cdf(t):
    return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))


def gelu_grad_pos(t):
    return phi_cdf(t) + t * math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)


def fit(f, top):
    """Coefficients [degree][interval] (u^0 first) and the worst float32 error on a fine grid."""
    width = top / INTERVALS
    scale = np.float32(INTERVALS / top)
    coef = np.zeros((DEGREE + 1, INTERVALS), dtype=np.float32)
    for k in range(INTERVALS):
        u = np.linspace(0.0, 1.0, 2001)
        y = np.array([f(k * width + v * width) for v in u])
        c = np.polynomial.chebyshev.Chebyshev.fit(u, y, DEGREE).convert(kind=np.polynomial.Polynomial).coef
        coef[:, k] = np.asarray(c, dtype=np.float32)
    # The last interval is exactly 1: the tails then give gelu(x) = 0 and gelu'(x) = 0 or 1 exactly
    # for large |x| (TOP is chosen so that the function is within 1e-7 of 1 there).
    coef[:, INTERVALS - 1] = 0.0
    coef[0, INTERVALS - 1] = 1.0
    # float32 evaluation, as the kernels do it: s = t * scale, k = min(int(s), 15), u = s - k.
    t = np.linspace(0.0, top, 400001, dtype=np.float32)
    s = (t * scale).astype(np.float32)
    k = np.minimum(s.astype(np.int32), INTERVALS - 1)
    u = (s - k.astype(np.float32)).astype(np.float32)
    p = coef[DEGREE][k]
    for d in range(DEGREE - 1, -1, -1):
        p = (p * u + coef[d][k]).astype(np.float32)  # the kernels fuse this (fma): closer still
    ref = np.array([f(float(v)) for v in t])
    return coef, float(np.max(np.abs(p - ref)))


def emit(name, coef, top, err):
    lines = [f'// {name}: degree-5 polynomials on sixteen intervals of [0, {top}] (scripts/gelu-tables.py; worst',
             f'// |error| {err:.1e} in float32), [power of u][interval].',
             f'alignas(64) inline constexpr float {name}[{DEGREE + 1}][{INTERVALS}] = {{']
    for d in range(DEGREE + 1):
        vals = [f'{float(v):.9e}f' for v in coef[d]]
        chunks = [', '.join(vals[i:i + 4]) for i in range(0, INTERVALS, 4)]
        lines.append('    {' + (',\n     '.join(chunks)) + '},')
    lines.append('};')
    return '\n'.join(lines)


def main():
    cdf, cdf_err = fit(phi_cdf, CDF_TOP)
    grad, grad_err = fit(gelu_grad_pos, GRAD_TOP)
    print(f'constexpr float GELU_CDF_TOP = {CDF_TOP}f, GELU_GRAD_TOP = {GRAD_TOP}f;')
    print(emit('GELU_CDF', cdf, CDF_TOP, cdf_err))
    print(emit('GELU_GRAD', grad, GRAD_TOP, grad_err))


if __name__ == '__main__':
    main()
