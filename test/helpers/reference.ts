/**
 * Float64 reference implementations of every op, written for clarity, not speed: the
 * definition duat's native kernels are checked against.
 */

/** A float64 n-d array. */
export interface Arr {
  data: Float64Array;
  shape: number[];
}

export const numel = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);
export const arr = (data: ArrayLike<number>, shape: number[]): Arr => ({ data: Float64Array.from(data), shape: [...shape] });
export const stridesOf = (shape: number[]): number[] => {
  const s = new Array(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1] * shape[i + 1];
  return s;
};

/** Calls fn(index, flatOffset) for every element in row-major order. */
export function forEachIndex(shape: number[], fn: (idx: number[], flat: number) => void): void {
  const n = numel(shape);
  const idx = new Array(shape.length).fill(0);
  for (let f = 0; f < n; f++) {
    fn(idx, f);
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

export function broadcastShape(a: number[], b: number[]): number[] {
  const n = Math.max(a.length, b.length);
  return Array.from({ length: n }, (_, i) => {
    const da = a[i - (n - a.length)] ?? 1, db = b[i - (n - b.length)] ?? 1;
    return da === 1 ? db : da;
  });
}

function at(x: Arr, idx: number[]): number {
  // Reads x broadcast to an index of a larger shape.
  const lead = idx.length - x.shape.length;
  const st = stridesOf(x.shape);
  let off = 0;
  x.shape.forEach((d, i) => (off += (d === 1 ? 0 : idx[lead + i]) * st[i]));
  return x.data[off];
}

export function binary(a: Arr, b: Arr, f: (x: number, y: number) => number): Arr {
  const shape = broadcastShape(a.shape, b.shape);
  const out = new Float64Array(numel(shape));
  forEachIndex(shape, (idx, flat) => (out[flat] = f(at(a, idx), at(b, idx))));
  return { data: out, shape };
}

export const map = (a: Arr, f: (x: number) => number): Arr => ({ data: a.data.map(f), shape: a.shape });

export function matmul(a: Arr, b: Arr): Arr {
  const M = a.shape[a.shape.length - 2], K = a.shape[a.shape.length - 1], N = b.shape[b.shape.length - 1];
  const batch = a.shape.slice(0, -2);
  const nb = numel(batch);
  const shared = b.shape.length === 2;
  const out = new Float64Array(nb * M * N);
  for (let t = 0; t < nb; t++)
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += a.data[t * M * K + i * K + k] * b.data[(shared ? 0 : t * K * N) + k * N + j];
        out[t * M * N + i * N + j] = s;
      }
  return { data: out, shape: [...batch, M, N] };
}

export function linear(x: Arr, w: Arr, b?: Arr): Arr {
  const [O, I] = w.shape;
  const rows = numel(x.shape) / I;
  const out = new Float64Array(rows * O);
  for (let r = 0; r < rows; r++)
    for (let o = 0; o < O; o++) {
      let s = b ? b.data[o] : 0;
      for (let i = 0; i < I; i++) s += x.data[r * I + i] * w.data[o * I + i];
      out[r * O + o] = s;
    }
  return { data: out, shape: [...x.shape.slice(0, -1), O] };
}

export function reduceSum(x: Arr, dims: number[], keepDim: boolean, mean = false): Arr {
  const nd = x.shape.length;
  const red = dims.length === 0 ? x.shape.map((_, i) => i) : dims.map((d) => (d < 0 ? d + nd : d));
  const keep = x.shape.map((d, i) => (red.includes(i) ? 1 : d));
  const out = new Float64Array(numel(keep));
  const ks = stridesOf(keep);
  forEachIndex(x.shape, (idx, flat) => {
    let off = 0;
    idx.forEach((v, i) => (off += (red.includes(i) ? 0 : v) * ks[i]));
    out[off] += x.data[flat];
  });
  const count = numel(x.shape) / numel(keep);
  if (mean) out.forEach((v, i) => (out[i] = v / count));
  return { data: out, shape: keepDim ? keep : x.shape.filter((_, i) => !red.includes(i)) };
}

export function permute(x: Arr, perm: number[]): Arr {
  const shape = perm.map((p) => x.shape[p]);
  const st = stridesOf(x.shape);
  const out = new Float64Array(numel(shape));
  forEachIndex(shape, (idx, flat) => {
    let off = 0;
    idx.forEach((v, i) => (off += v * st[perm[i]]));
    out[flat] = x.data[off];
  });
  return { data: out, shape };
}

export function slice(x: Arr, dim: number, start: number, end: number, step: number): Arr {
  const d = dim < 0 ? dim + x.shape.length : dim;
  const len = Math.ceil((end - start) / step);
  const shape = x.shape.map((s, i) => (i === d ? len : s));
  const st = stridesOf(x.shape);
  const out = new Float64Array(numel(shape));
  forEachIndex(shape, (idx, flat) => {
    let off = 0;
    idx.forEach((v, i) => (off += (i === d ? start + v * step : v) * st[i]));
    out[flat] = x.data[off];
  });
  return { data: out, shape };
}

export function concat(xs: Arr[], dim: number): Arr {
  const d = dim < 0 ? dim + xs[0].shape.length : dim;
  const shape = xs[0].shape.map((s, i) => (i === d ? xs.reduce((n, x) => n + x.shape[d], 0) : s));
  const out = new Float64Array(numel(shape));
  const so = stridesOf(shape);
  let at0 = 0;
  for (const x of xs) {
    forEachIndex(x.shape, (idx, flat) => {
      let off = 0;
      idx.forEach((v, i) => (off += (i === d ? v + at0 : v) * so[i]));
      out[off] = x.data[flat];
    });
    at0 += x.shape[d];
  }
  return { data: out, shape };
}

/** erf to double precision: Taylor series near 0, continued fraction for erfc beyond. */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let term = ax, sum = ax;
    for (let n = 1; n < 100; n++) {
      term *= (-ax * ax) / n;
      const t = term / (2 * n + 1);
      sum += t;
      if (Math.abs(t) < 1e-17 * Math.abs(sum)) break;
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))) (Lentz)
  let f = ax, c = ax, dd = 0;
  for (let n = 1; n < 200; n++) {
    const an = n / 2;
    dd = ax + an * dd;
    dd = 1 / dd;
    c = ax + an / c;
    const delta = c * dd;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return Math.sign(x) * (1 - erfc);
}

export const gelu = (x: Arr): Arr => map(x, (v) => 0.5 * v * (1 + erf(v / Math.SQRT2)));

function rows(x: Arr, f: (row: Float64Array) => Float64Array): Arr {
  const C = x.shape[x.shape.length - 1];
  const out = new Float64Array(x.data.length);
  for (let r = 0; r < x.data.length / C; r++) out.set(f(x.data.subarray(r * C, (r + 1) * C)), r * C);
  return { data: out, shape: x.shape };
}

export const softmax = (x: Arr): Arr =>
  rows(x, (r) => {
    const m = Math.max(...r);
    const e = r.map((v) => Math.exp(v - m));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  });

export const logSoftmax = (x: Arr): Arr =>
  rows(x, (r) => {
    const m = Math.max(...r);
    const lse = m + Math.log(r.reduce((a, v) => a + Math.exp(v - m), 0));
    return r.map((v) => v - lse);
  });

export function layerNorm(x: Arr, w: Arr | null, b: Arr | null, eps: number): Arr {
  return rows(x, (r) => {
    const C = r.length;
    const mu = r.reduce((a, v) => a + v, 0) / C;
    const varr = r.reduce((a, v) => a + (v - mu) ** 2, 0) / C;
    const rs = 1 / Math.sqrt(varr + eps);
    return r.map((v, i) => (v - mu) * rs * (w ? w.data[i] : 1) + (b ? b.data[i] : 0));
  });
}

/** Attention probabilities (B, H, T, T) from qkv (B, T, 3C). */
export function attentionProbs(qkv: Arr, H: number): Arr {
  const [B, T, C3] = qkv.shape;
  const C = C3 / 3, D = C / H;
  const out = new Float64Array(B * H * T * T);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < T; i++) {
        const s = new Float64Array(T);
        for (let j = 0; j < T; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qkv.data[(b * T + i) * C3 + h * D + d] * qkv.data[(b * T + j) * C3 + C + h * D + d];
          s[j] = dot / Math.sqrt(D);
        }
        out.set(softmax({ data: s, shape: [T] }).data, ((b * H + h) * T + i) * T);
      }
  return { data: out, shape: [B, H, T, T] };
}

export function attention(qkv: Arr, H: number): Arr {
  const [B, T, C3] = qkv.shape;
  const C = C3 / 3, D = C / H;
  const p = attentionProbs(qkv, H);
  const out = new Float64Array(B * T * C);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < T; i++)
        for (let d = 0; d < D; d++) {
          let s = 0;
          for (let j = 0; j < T; j++) s += p.data[((b * H + h) * T + i) * T + j] * qkv.data[(b * T + j) * C3 + 2 * C + h * D + d];
          out[(b * T + i) * C + h * D + d] = s;
        }
  return { data: out, shape: [B, T, C] };
}

export function crossEntropy(logits: Arr, labels: ArrayLike<number>, smoothing: number): Arr {
  const [B, K] = logits.shape;
  const lp = logSoftmax(logits).data;
  let total = 0;
  for (let i = 0; i < B; i++)
    for (let k = 0; k < K; k++) {
      const q = (k === labels[i] ? 1 - smoothing : 0) + smoothing / K;
      total -= q * lp[i * K + k];
    }
  return { data: Float64Array.of(total / B), shape: [] };
}

export function patchify(x: Arr, P: number): Arr {
  const [B, ch, S] = x.shape;
  const G = S / P, T = G * G, F = ch * P * P;
  const out = new Float64Array(B * T * F);
  for (let b = 0; b < B; b++)
    for (let gy = 0; gy < G; gy++)
      for (let gx = 0; gx < G; gx++)
        for (let c = 0; c < ch; c++)
          for (let py = 0; py < P; py++)
            for (let px = 0; px < P; px++)
              out[(b * T + gy * G + gx) * F + (c * P + py) * P + px] = x.data[((b * ch + c) * S + gy * P + py) * S + gx * P + px];
  return { data: out, shape: [B, T, F] };
}

/** Row r of a 2-D array, or element [n, r, :] of a 3-D one. */
const rowOf = (x: Arr, n: number, r: number): Float64Array => {
  const C = x.shape[x.shape.length - 1];
  const R = x.shape[x.shape.length - 2];
  const base = x.shape.length === 3 ? (n * R + r) * C : r * C;
  return x.data.subarray(base, base + C);
};

/**
 * Branched linear layers: y[n, r, o] = act(sum_c (x_n[r, c] * g[n, c] + beta[n, c]) w[n, o, c] + b[n, o]),
 * x (R, C) shared or (N, R, C); the LayerNorm affine (g, beta) optional.
 */
export function branchLinear(x: Arr, w: Arr, b: Arr | null, g: Arr | null, beta: Arr | null, useGelu: boolean): Arr {
  const [N, O, C] = w.shape;
  const R = x.shape[x.shape.length - 2];
  const out = new Float64Array(N * R * O);
  for (let n = 0; n < N; n++)
    for (let r = 0; r < R; r++) {
      const xr = rowOf(x, n, r);
      for (let o = 0; o < O; o++) {
        let v = b ? b.data[n * O + o] : 0;
        for (let c = 0; c < C; c++) {
          const xa = g && beta ? xr[c] * g.data[n * C + c] + beta.data[n * C + c] : xr[c];
          v += xa * w.data[(n * O + o) * C + c];
        }
        out[(n * R + r) * O + o] = useGelu ? 0.5 * v * (1 + erf(v / Math.SQRT2)) : v;
      }
    }
  return { data: out, shape: [N, R, O] };
}

/** The stage sum: x + s * (sum_n h_n w2[:, n*M:(n+1)*M]^T + b2 + sum_n a_n); h (N, R, M). */
export function stageSum(x: Arr, h: Arr, w2: Arr, b2: Arr, a: Arr, s: number): Arr {
  const [N, R, M] = h.shape;
  const C = x.shape[1];
  const out = new Float64Array(R * C);
  for (let r = 0; r < R; r++)
    for (let c = 0; c < C; c++) {
      let v = b2.data[c];
      for (let n = 0; n < N; n++) {
        for (let m = 0; m < M; m++) v += h.data[(n * R + r) * M + m] * w2.data[c * N * M + n * M + m];
        v += a.data[(n * R + r) * C + c];
      }
      out[r * C + c] = x.data[r * C + c] + s * v;
    }
  return { data: out, shape: [R, C] };
}

/** LayerNorm without affine of x (..., R, C) + resid (R, C), the residual shared by every row set. */
export function layerNormResidual(x: Arr, resid: Arr, eps: number): Arr {
  const rc = resid.data.length;
  const sum = { data: x.data.map((v, i) => v + resid.data[i % rc]), shape: x.shape };
  return layerNorm(sum, null, null, eps);
}
