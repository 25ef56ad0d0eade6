/**
 * The op checker: forward against a float64 reference, backward against central differences
 * of that reference (in float64, so the numeric derivative itself is exact to ~1e-9), and a
 * spot check of backward against central differences of duat's own float32 forward.
 */
import * as duat from '../../lib';
import { Arr, numel } from './reference';

/** float32 outputs of sums of up to ~100 terms against float64: a few ulp of the largest value. */
export const FORWARD_TOL = 2e-5;
/** Analytic float32 gradients against exact derivatives of the same function. */
export const BACKWARD_TOL = 1e-4;
/** Central differences through duat's float32 forward (h = 1e-2): limited by float32 rounding. */
export const SELF_TOL = 2e-2;

/** A seeded generator (mulberry32), so every test input is reproducible. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface InputSpec {
  shape: number[];
  /** Values drawn from [lo, hi); `awayFromZero` flips signs of [lo, hi) magnitudes. Default [-1, 1). */
  range?: [number, number];
  awayFromZero?: boolean;
  /** Whether this input gets a gradient check. Default true. */
  grad?: boolean;
}

export interface OpCase {
  name: string;
  inputs: InputSpec[];
  run: (xs: duat.Tensor[]) => duat.Tensor;
  ref: (xs: Arr[]) => Arr;
}

export function randomData(spec: InputSpec, next: () => number): Float32Array {
  const [lo, hi] = spec.range ?? [-1, 1];
  return Float32Array.from({ length: numel(spec.shape) }, () => {
    const v = lo + (hi - lo) * next();
    return spec.awayFromZero && next() < 0.5 ? -v : v;
  });
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0, scale = 1;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]));
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return a.length === b.length ? worst / scale : Infinity;
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

export interface CheckResult {
  forward: number;
  backward: number[];
  self: number[];
}

/**
 * Runs every check of one op case on `device` (inputs, the incoming gradient and the re-runs of
 * the spot check all live there; results are read back); returns the errors (tests compare them
 * to the tolerances).
 */
export function checkOp(c: OpCase, seed = 1, device: duat.Device = 'cpu'): CheckResult {
  const next = rng(seed);
  const data = c.inputs.map((s) => randomData(s, next));
  const arrs: Arr[] = data.map((d, i) => ({ data: Float64Array.from(d), shape: c.inputs[i].shape }));
  return duat.tidy(() => {
    const ts = data.map((d, i) =>
      duat.tensor(d, c.inputs[i].shape, { requiresGrad: c.inputs[i].grad !== false, device }),
    );
    const out = c.run(ts);
    const ref = c.ref(arrs);
    const forward = relErr(out.toArray(), ref.data);
    expect(out.shape).toEqual(ref.shape);
    const g = randomData({ shape: ref.shape }, next);
    expect(out.device).toBe(device);
    out.backward(duat.tensor(g, ref.shape, { device }));

    const backward: number[] = [];
    const self: number[] = [];
    c.inputs.forEach((spec, i) => {
      if (spec.grad === false) return;
      const analytic = ts[i].grad?.toArray() ?? new Float32Array(data[i].length);
      // Exact derivative of sum(ref(x) * g) by central differences in float64.
      const h = 1e-6;
      const numeric = new Float64Array(data[i].length);
      for (let j = 0; j < numeric.length; j++) {
        const x0 = arrs[i].data[j];
        arrs[i].data[j] = x0 + h;
        const up = dot(c.ref(arrs).data, g);
        arrs[i].data[j] = x0 - h;
        const down = dot(c.ref(arrs).data, g);
        arrs[i].data[j] = x0;
        numeric[j] = (up - down) / (2 * h);
      }
      backward.push(relErr(analytic, numeric));
      // Spot check through duat's own float32 forward at a few elements.
      let worst = 0;
      const hs = 1e-2;
      for (let k = 0; k < Math.min(4, numeric.length); k++) {
        const j = Math.floor(next() * numeric.length);
        const evalAt = (v: number) =>
          duat.noGrad(() => {
            const d2 = data.map((d) => d.slice());
            d2[i][j] = v;
            return dot(c.run(d2.map((d, m) => duat.tensor(d, c.inputs[m].shape, { device }))).toArray(), g);
          });
        const fd = (evalAt(data[i][j] + hs) - evalAt(data[i][j] - hs)) / (2 * hs);
        worst = Math.max(worst, Math.abs(fd - analytic[j]) / Math.max(1, Math.abs(fd)));
      }
      self.push(worst);
    });
    return { forward, backward, self };
  });
}

/** Live tensors and bytes (all devices, and of which on CUDA): what a leak check compares. */
export function live(): { tensors: number; bytes: number; cudaBytes: number } {
  const m = duat.memory();
  return { tensors: m.tensors, bytes: m.bytes, cudaBytes: m.cudaBytes };
}
