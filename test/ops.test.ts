/**
 * Every differentiable op: forward against the float64 reference, backward against central
 * differences, each on fresh random inputs (seeded), including views and broadcasting.
 */
import * as duat from '../lib';
import { native } from '../lib/native';
import { BACKWARD_TOL, checkOp, FORWARD_TOL, OpCase, SELF_TOL } from './helpers/gradcheck';
import * as R from './helpers/reference';

const { F } = duat;
const LABELS = Int32Array.from([2, 0, 4, 1]);

const cases: OpCase[] = [
  { name: 'add', inputs: [{ shape: [3, 4] }, { shape: [3, 4] }], run: ([a, b]) => a.add(b), ref: ([a, b]) => R.binary(a, b, (x, y) => x + y) },
  { name: 'add (broadcast)', inputs: [{ shape: [2, 3, 4] }, { shape: [3, 1] }], run: ([a, b]) => a.add(b), ref: ([a, b]) => R.binary(a, b, (x, y) => x + y) },
  { name: 'sub (broadcast)', inputs: [{ shape: [4] }, { shape: [2, 1, 4] }], run: ([a, b]) => a.sub(b), ref: ([a, b]) => R.binary(a, b, (x, y) => x - y) },
  { name: 'mul (broadcast)', inputs: [{ shape: [2, 3] }, { shape: [1, 3] }], run: ([a, b]) => a.mul(b), ref: ([a, b]) => R.binary(a, b, (x, y) => x * y) },
  {
    name: 'div (broadcast)',
    inputs: [{ shape: [2, 3] }, { shape: [3], range: [0.5, 1.5], awayFromZero: true }],
    run: ([a, b]) => a.div(b),
    ref: ([a, b]) => R.binary(a, b, (x, y) => x / y),
  },
  { name: 'addScalar', inputs: [{ shape: [5] }], run: ([a]) => a.add(2.5), ref: ([a]) => R.map(a, (x) => x + 2.5) },
  { name: 'mulScalar', inputs: [{ shape: [5] }], run: ([a]) => a.mul(-3), ref: ([a]) => R.map(a, (x) => x * -3) },
  { name: 'divScalar', inputs: [{ shape: [5] }], run: ([a]) => a.div(4), ref: ([a]) => R.map(a, (x) => x / 4) },
  { name: 'matmul 2-D', inputs: [{ shape: [5, 7] }, { shape: [7, 3] }], run: ([a, b]) => a.matmul(b), ref: ([a, b]) => R.matmul(a, b) },
  { name: 'matmul batched', inputs: [{ shape: [2, 3, 4] }, { shape: [2, 4, 5] }], run: ([a, b]) => a.matmul(b), ref: ([a, b]) => R.matmul(a, b) },
  { name: 'matmul shared right operand', inputs: [{ shape: [2, 3, 4] }, { shape: [4, 6] }], run: ([a, b]) => a.matmul(b), ref: ([a, b]) => R.matmul(a, b) },
  {
    name: 'matmul of transposed views',
    inputs: [{ shape: [4, 3] }, { shape: [5, 4] }],
    run: ([a, b]) => a.transpose().matmul(b.transpose()),
    ref: ([a, b]) => R.matmul(R.permute(a, [1, 0]), R.permute(b, [1, 0])),
  },
  {
    name: 'matmul batched of permuted views',
    inputs: [{ shape: [3, 2, 4] }, { shape: [2, 5, 4] }],
    run: ([a, b]) => a.permute(1, 0, 2).matmul(b.transpose(1, 2).transpose(1, 2).transpose(1, 2)),
    ref: ([a, b]) => R.matmul(R.permute(a, [1, 0, 2]), R.permute(b, [0, 2, 1])),
  },
  {
    name: 'linear',
    inputs: [{ shape: [2, 3, 6] }, { shape: [4, 6] }, { shape: [4] }],
    run: ([x, w, b]) => F.linear(x, w, b),
    ref: ([x, w, b]) => R.linear(x, w, b),
  },
  { name: 'linear without bias', inputs: [{ shape: [5, 6] }, { shape: [3, 6] }], run: ([x, w]) => F.linear(x, w), ref: ([x, w]) => R.linear(x, w) },
  { name: 'sum (all)', inputs: [{ shape: [3, 4] }], run: ([x]) => x.sum(), ref: ([x]) => R.reduceSum(x, [], false) },
  { name: 'sum (dims)', inputs: [{ shape: [2, 3, 4] }], run: ([x]) => x.sum([0, 2]), ref: ([x]) => R.reduceSum(x, [0, 2], false) },
  // A sum of nothing is 0, also where fresh memory holds garbage (the test device's reads as NaN).
  { name: 'sum over an empty dimension', inputs: [{ shape: [3, 0, 2] }], run: ([x]) => x.sum(1), ref: ([x]) => R.reduceSum(x, [1], false) },
  { name: 'sum (keepDim)', inputs: [{ shape: [2, 3, 4] }], run: ([x]) => x.sum(-1, true), ref: ([x]) => R.reduceSum(x, [-1], true) },
  { name: 'mean (dim)', inputs: [{ shape: [2, 3, 4] }], run: ([x]) => x.mean(1), ref: ([x]) => R.reduceSum(x, [1], false, true) },
  { name: 'mean of a view', inputs: [{ shape: [3, 4] }], run: ([x]) => x.transpose().mean(0), ref: ([x]) => R.reduceSum(R.permute(x, [1, 0]), [0], false, true) },
  { name: 'reshape', inputs: [{ shape: [2, 6] }], run: ([x]) => x.reshape(3, -1).mul(x.reshape([3, 4])), ref: ([x]) => R.map({ data: x.data, shape: [3, 4] }, (v) => v * v) },
  { name: 'reshape of a view (copies)', inputs: [{ shape: [3, 4] }], run: ([x]) => x.transpose().reshape(12), ref: ([x]) => ({ data: R.permute(x, [1, 0]).data, shape: [12] }) },
  { name: 'transpose', inputs: [{ shape: [2, 3, 4] }], run: ([x]) => x.transpose(0, 2).contiguous(), ref: ([x]) => R.permute(x, [2, 1, 0]) },
  { name: 'permute', inputs: [{ shape: [2, 3, 4] }], run: ([x]) => x.permute(1, 2, 0).mul(2), ref: ([x]) => R.map(R.permute(x, [1, 2, 0]), (v) => 2 * v) },
  { name: 'slice', inputs: [{ shape: [4, 7] }], run: ([x]) => x.slice(1, 1, 6, 2).add(0), ref: ([x]) => R.slice(x, 1, 1, 6, 2) },
  { name: 'slice (negative start)', inputs: [{ shape: [5, 3] }], run: ([x]) => x.slice(0, -2).add(0), ref: ([x]) => R.slice(x, 0, 3, 5, 1) },
  { name: 'slice (a step far beyond the dimension)', inputs: [{ shape: [5, 3] }], run: ([x]) => x.slice(0, 1, 5, 2 ** 40).add(0), ref: ([x]) => R.slice(x, 0, 1, 2, 1) },
  {
    name: 'concat',
    inputs: [{ shape: [2, 3] }, { shape: [2, 1] }, { shape: [2, 2] }],
    run: (xs) => F.concat(xs, 1),
    ref: (xs) => R.concat(xs, 1),
  },
  { name: 'gelu', inputs: [{ shape: [40], range: [-4, 4] }], run: ([x]) => F.gelu(x), ref: ([x]) => R.gelu(x) },
  { name: 'softmax', inputs: [{ shape: [3, 6], range: [-3, 3] }], run: ([x]) => F.softmax(x), ref: ([x]) => R.softmax(x) },
  {
    name: 'softmax (dim 0)',
    inputs: [{ shape: [4, 3], range: [-3, 3] }],
    run: ([x]) => F.softmax(x, 0).contiguous(),
    ref: ([x]) => R.permute(R.softmax(R.permute(x, [1, 0])), [1, 0]),
  },
  { name: 'logSoftmax', inputs: [{ shape: [3, 6], range: [-3, 3] }], run: ([x]) => F.logSoftmax(x), ref: ([x]) => R.logSoftmax(x) },
  {
    name: 'layerNorm',
    inputs: [{ shape: [3, 8], range: [-2, 2] }, { shape: [8] }, { shape: [8] }],
    run: ([x, w, b]) => F.layerNorm(x, w, b, 1e-6),
    ref: ([x, w, b]) => R.layerNorm(x, w, b, 1e-6),
  },
  {
    name: 'layerNorm without affine',
    inputs: [{ shape: [2, 2, 5], range: [-2, 2] }],
    run: ([x]) => F.layerNorm(x, null, null, 1e-5),
    ref: ([x]) => R.layerNorm(x, null, null, 1e-5),
  },
  {
    name: 'attention',
    inputs: [{ shape: [2, 5, 12], range: [-1.5, 1.5] }],
    run: ([qkv]) => F.attention(qkv, 2),
    ref: ([qkv]) => R.attention(qkv, 2),
  },
  {
    name: 'attention over 3 branches',
    inputs: [{ shape: [2, 4, 3 * 12], range: [-1.5, 1.5] }],
    run: ([qkv]) => F.attention(qkv, 2, 3),
    ref: ([qkv]) => R.concat([0, 1, 2].map((n) => R.attention(R.slice(qkv, 2, n * 12, (n + 1) * 12, 1), 2)), 2),
  },
  {
    // 17 queries: one full block of 16 and one of 1 in the CPU's transposed probabilities.
    name: 'attention over 17 tokens',
    inputs: [{ shape: [2, 17, 12], range: [-1.5, 1.5] }],
    run: ([qkv]) => F.attention(qkv, 2),
    ref: ([qkv]) => R.attention(qkv, 2),
  },
  {
    name: 'attention of a strided view',
    inputs: [{ shape: [5, 2, 6], range: [-1.5, 1.5] }],
    run: ([x]) => F.attention(x.transpose(0, 1), 1),
    ref: ([x]) => R.attention(R.permute(x, [1, 0, 2]), 1),
  },
  {
    name: 'crossEntropy',
    inputs: [{ shape: [4, 5], range: [-3, 3] }],
    run: ([l]) => F.crossEntropy(l, LABELS),
    ref: ([l]) => R.crossEntropy(l, LABELS, 0),
  },
  {
    name: 'crossEntropy with label smoothing',
    inputs: [{ shape: [4, 5], range: [-3, 3] }],
    run: ([l]) => F.crossEntropy(l, duat.tensor(LABELS, [4], { device: l.device }), { labelSmoothing: 0.1 }),
    ref: ([l]) => R.crossEntropy(l, LABELS, 0.1),
  },
  { name: 'patchify', inputs: [{ shape: [2, 3, 4, 4] }], run: ([x]) => F.patchify(x, 2), ref: ([x]) => R.patchify(x, 2) },
  {
    name: 'patchEmbed',
    inputs: [{ shape: [2, 2, 6, 6] }, { shape: [4, 2, 3, 3] }, { shape: [4] }],
    run: ([x, w, b]) => F.patchEmbed(x, w, b, 3),
    ref: ([x, w, b]) => R.linear(R.patchify(x, 3), { data: w.data, shape: [4, 18] }, b),
  },
  {
    name: 'layerNorm with a residual shared by row sets',
    inputs: [{ shape: [2, 3, 5], range: [-2, 2] }, { shape: [3, 5], range: [-2, 2] }],
    run: ([x, r]) => F.layerNorm(x, null, null, 1e-6, r),
    ref: ([x, r]) => R.layerNormResidual(x, r, 1e-6),
  },
  {
    // Both gradients land in buffers that already hold some (x's from the sum; the residual's
    // and x's from the first layerNorm): the fused backward adds to them.
    name: 'layerNorm with a residual, its input and residual used twice',
    inputs: [{ shape: [4, 3, 5], range: [-2, 2] }, { shape: [3, 5], range: [-2, 2] }],
    run: ([x, r]) => x.add(F.layerNorm(x, null, null, 1e-6, r)).add(F.layerNorm(x.add(x), null, null, 1e-6, r)).add(r),
    ref: ([x, r]) => {
      const once = R.binary(x, R.layerNormResidual(x, r, 1e-6), (p, q) => p + q);
      const twice = R.binary(once, R.layerNormResidual(R.map(x, (v) => 2 * v), r, 1e-6), (p, q) => p + q);
      return R.binary(twice, r, (p, q) => p + q);
    },
  },
  {
    name: 'branchLinear: shared input, folded LayerNorm, interleaved (QKV)',
    inputs: [{ shape: [5, 6] }, { shape: [3, 4, 6] }, { shape: [3, 4] }, { shape: [3, 6], range: [0.5, 1.5] }, { shape: [3, 6] }],
    run: ([x, w, b, g, beta]) => F.branchLinear(x, w, b, { lnWeight: g, lnBias: beta, interleaved: true }),
    ref: ([x, w, b, g, beta]) => R.branchLinear(x, w, b, g, beta, false),
  },
  {
    name: 'branchLinear: one input per branch, folded LayerNorm, GELU, interleaved (fc1)',
    inputs: [{ shape: [3, 5, 6] }, { shape: [3, 4, 6] }, { shape: [3, 4] }, { shape: [3, 6], range: [0.5, 1.5] }, { shape: [3, 6] }],
    run: ([x, w, b, g, beta]) => F.branchLinear(x, w, b, { lnWeight: g, lnBias: beta, gelu: true, interleaved: true }),
    ref: ([x, w, b, g, beta]) => R.branchLinear(x, w, b, g, beta, true),
  },
  {
    // The sum is laid out like z (branch-major); the interleaved output still gets its gradient
    // in its own layout (autograd.cpp), which the fused GELU and bias backward relies on.
    name: 'branchLinear: GELU, interleaved, added to a branch-major tensor',
    inputs: [{ shape: [3, 5, 6] }, { shape: [3, 4, 6] }, { shape: [3, 4] }, { shape: [3, 5, 4] }],
    run: ([x, w, b, z]) => z.add(F.branchLinear(x, w, b, { gelu: true, interleaved: true })),
    ref: ([x, w, b, z]) => R.binary(z, R.branchLinear(x, w, b, null, null, true), (p, q) => p + q),
  },
  {
    // A transposed bias gets a transposed gradient buffer: the GELU bias sums go into it by a
    // reduction, not by gelu_backward_bias (which writes contiguous rows).
    name: 'branchLinear: GELU, a bias whose gradient buffer is not contiguous',
    inputs: [{ shape: [3, 5, 6] }, { shape: [3, 4, 6] }, { shape: [4, 3] }],
    run: ([x, w, bt]) => F.branchLinear(x, w, bt.transpose(0, 1), { gelu: true }),
    ref: ([x, w, bt]) => R.branchLinear(x, w, R.permute(bt, [1, 0]), null, null, true),
  },
  {
    name: 'branchLinear: inputs as a strided view, branch-major output (proj)',
    inputs: [{ shape: [5, 3 * 6] }, { shape: [3, 4, 6] }, { shape: [3, 4] }],
    run: ([x, w, b]) => F.branchLinear(x.reshape(5, 3, 6).permute(1, 0, 2), w, b),
    ref: ([x, w, b]) => R.branchLinear(R.permute({ data: x.data, shape: [5, 3, 6] }, [1, 0, 2]), w, b, null, null, false),
  },
  {
    name: 'stageSum',
    inputs: [{ shape: [5, 6] }, { shape: [2, 5, 4] }, { shape: [6, 8] }, { shape: [6] }, { shape: [2, 5, 6] }],
    run: ([x, h, w2, b2, a]) => F.stageSum(x, h, w2, b2, a, 0.5),
    ref: ([x, h, w2, b2, a]) => R.stageSum(x, h, w2, b2, a, 0.5),
  },
  {
    name: 'stageSum of an interleaved branchLinear (fc1 + fc2)',
    inputs: [{ shape: [4, 6] }, { shape: [2, 4, 6] }, { shape: [2, 3, 6] }, { shape: [6, 6] }, { shape: [6] }, { shape: [2, 4, 6] }],
    run: ([x, u, w1, w2, b2, a]) => F.stageSum(x, F.branchLinear(u, w1, null, { gelu: true, interleaved: true }), w2, b2, a),
    ref: ([x, u, w1, w2, b2, a]) => R.stageSum(x, R.branchLinear(u, w1, null, null, null, true), w2, b2, a, 1),
  },
  {
    // With a fixed seed dropout is linear in x; the reference reads the same mask off ones.
    name: 'dropout (fixed seed)',
    inputs: [{ shape: [6, 5] }],
    run: ([x]) => F.dropout(x, 0.3, { seed: 9 }),
    ref: ([x]) => {
      const mask = duat.tidy(() => F.dropout(duat.ones([6, 5]), 0.3, { seed: 9 }).toArray());
      return R.binary(x, R.arr(mask, [6, 5]), (a, m) => a * m);
    },
  },
];

// Every op runs on each available device: the CPU, and 'cuda' (a GPU where one is usable, the
// test device otherwise: host memory and CPU kernels behind every CUDA code path but the kernels).
const useTestDevice = !duat.backendInfo().cuda.available;
beforeAll(() => {
  if (useTestDevice) native().setTestDevice(true);
});
afterAll(() => {
  if (useTestDevice) native().setTestDevice(false);
});

describe.each(['cpu', 'cuda'] as const)('on %s', (device) => {
  describe.each(cases)('$name', (c) => {
    test('forward matches float64, backward matches central differences', () => {
      const r = checkOp(c, 1, device);
      expect(r.forward).toBeLessThan(FORWARD_TOL);
      for (const b of r.backward) expect(b).toBeLessThan(BACKWARD_TOL);
      for (const s of r.self) expect(s).toBeLessThan(SELF_TOL);
    });
  });
});

describe('the checker itself', () => {
  test('catches a wrong backward (negated gradient)', () => {
    // x * x with y = -x reused: a deliberately wrong "reference" derivative must fail the check.
    const r = checkOp({
      name: 'wrong',
      inputs: [{ shape: [4] }],
      run: ([x]) => x.mul(x),
      ref: ([x]) => R.map(x, (v) => -v * v),
    });
    expect(r.backward[0]).toBeGreaterThan(BACKWARD_TOL);
  });
});

describe('dropout', () => {
  test('zeroes about p of the elements, scales the rest, and its backward uses the same mask', () => {
    duat.tidy(() => {
      const x = duat.ones([4000], { requiresGrad: true });
      const y = F.dropout(x, 0.25, { seed: 7 });
      const out = y.toArray();
      const zeros = out.filter((v) => v === 0).length;
      expect(zeros / out.length).toBeGreaterThan(0.2);
      expect(zeros / out.length).toBeLessThan(0.3);
      for (const v of out) expect(v === 0 || Math.abs(v - 1 / 0.75) < 1e-6).toBe(true);
      y.backward(duat.ones([4000]));
      expect(Array.from(x.grad!.toArray())).toEqual(Array.from(out));
    });
  });
  test('the same seed gives the same mask; training false is the identity', () => {
    duat.tidy(() => {
      const x = duat.randn([100], { seed: 1 });
      expect(F.dropout(x, 0.5, { seed: 3 }).toArray()).toEqual(F.dropout(x, 0.5, { seed: 3 }).toArray());
      expect(F.dropout(x, 0.5, { training: false }).toArray()).toEqual(x.toArray());
    });
  });
});

describe('random init', () => {
  test('randn has the requested moments and is reproducible by seed', () => {
    duat.tidy(() => {
      const a = duat.randn([20000], { seed: 5, mean: 1, std: 2 }).toArray();
      const mean = a.reduce((s, v) => s + v, 0) / a.length;
      const sd = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
      expect(Math.abs(mean - 1)).toBeLessThan(0.05);
      expect(Math.abs(sd - 2)).toBeLessThan(0.05);
      expect(duat.randn([10], { seed: 5 }).toArray()).toEqual(duat.randn([10], { seed: 5 }).toArray());
      expect(duat.randn([10], { seed: 5 }).toArray()).not.toEqual(duat.randn([10], { seed: 6 }).toArray());
    });
  });
  test('rand is uniform in [low, high); truncNormal stays in [a, b]', () => {
    duat.tidy(() => {
      const u = duat.rand([10000], { seed: 2, low: -1, high: 3 }).toArray();
      expect(Math.min(...u)).toBeGreaterThanOrEqual(-1);
      expect(Math.max(...u)).toBeLessThan(3);
      expect(Math.abs(u.reduce((s, v) => s + v, 0) / u.length - 1)).toBeLessThan(0.05);
      const t = duat.truncNormal([10000], { seed: 3, std: 1, a: -0.5, b: 0.5 }).toArray();
      expect(Math.min(...t)).toBeGreaterThanOrEqual(-0.5);
      expect(Math.max(...t)).toBeLessThanOrEqual(0.5);
    });
  });
});

describe('argmax', () => {
  test('picks the first largest value per row', () => {
    duat.tidy(() => {
      const x = duat.tensor([1, 5, 5, 0, -1, -2, 9, 3], [2, 4]);
      expect(Array.from(x.argmax().toArray())).toEqual([1, 2]);
    });
  });
});

describe('attention over many images', () => {
  // With 4 images per thread or more, the CPU runs one task per image (all its heads in order,
  // cpu_nn.cpp for_each_head) instead of one per head: the same values as one image at a time.
  // Two threads, so that 32 images take that path on any machine.
  const saved = duat.getNumThreads();
  beforeAll(() => duat.setNumThreads(2));
  afterAll(() => duat.setNumThreads(saved));
  test('gives each image the output and gradient it gets alone', () => {
    duat.tidy(() => {
      const B = 32, T = 19, N = 2, C = 16;
      const qkv = duat.randn([B, T, N * 3 * C], { seed: 12 });
      const dout = duat.randn([B, T, N * C], { seed: 13 });
      const all = duat.tensor(qkv.toArray(), qkv.shape, { requiresGrad: true });
      const out = F.attention(all, 2, N);
      out.backward(dout);
      const outAll = out.toArray(), gradAll = all.grad!.toArray();
      const rowIn = T * N * 3 * C, rowOut = T * N * C;
      for (const b of [0, 7, B - 1]) {
        const one = duat.tensor(qkv.toArray().slice(b * rowIn, (b + 1) * rowIn), [1, T, N * 3 * C], { requiresGrad: true });
        const o = F.attention(one, 2, N);
        o.backward(duat.tensor(dout.toArray().slice(b * rowOut, (b + 1) * rowOut), [1, T, N * C]));
        expect(Array.from(o.toArray())).toEqual(Array.from(outAll.slice(b * rowOut, (b + 1) * rowOut)));
        expect(Array.from(one.grad!.toArray())).toEqual(Array.from(gradAll.slice(b * rowIn, (b + 1) * rowIn)));
      }
    });
  });
});

describe('attention without gradients', () => {
  test('gives the same output as with them (no probabilities kept)', () => {
    duat.tidy(() => {
      const qkv = duat.randn([3, 9, 2 * 24], { seed: 8 });
      const withGrad = duat.tensor(qkv.toArray(), qkv.shape, { requiresGrad: true });
      const a = F.attention(withGrad, 2, 2).toArray();
      const b = duat.noGrad(() => F.attention(qkv, 2, 2).toArray());
      expect(Array.from(b)).toEqual(Array.from(a));
    });
  });
});
