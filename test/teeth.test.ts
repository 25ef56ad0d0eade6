/**
 * Tests that check values, not shapes, for the TypeScript layer: each one is written to fail on a
 * plausible bug (the hardening audit planted 16 such bugs in lib/ and 15 passed the old tests).
 * The bug each test is aimed at is named beside it.
 */
import * as path from 'path';

import * as duat from '../lib';
import { learningRate, makeOptimizer } from '../lib/train/fit';
import * as R from './helpers/reference';

const SLICE = path.join(__dirname, 'fixtures', 'mnist-slice');

/** A data set whose image i is filled with the value i and whose label is (i * 7) % 10. */
function numbered(count: number, size = 6, channels = 1): duat.data.Dataset {
  const px = channels * size * size;
  const images = new Float32Array(count * px);
  for (let i = 0; i < count; i++) images.fill(i, i * px, (i + 1) * px);
  const labels = Int32Array.from({ length: count }, (_, i) => (i * 7) % 10);
  return { name: 'numbered', images, labels, count, channels, size, classes: 10 };
}

describe('data', () => {
  test('MNIST pixels are (raw / 255 - 0.1307) / 0.3081 (bug: mean or std changed)', () => {
    expect([duat.data.MNIST_MEAN, duat.data.MNIST_STD]).toEqual([0.1307, 0.3081]);
    const raw = duat.data.readIdx(path.join(SLICE, 'train-images-idx3-ubyte'));
    const labels = duat.data.readIdx(path.join(SLICE, 'train-labels-idx1-ubyte'));
    const d = duat.data.loadMnist('train', { dir: SLICE, limit: 3 });
    for (let i = 0; i < 3 * 784; i += 37) expect(d.images[i]).toBeCloseTo((raw.data[i] / 255 - 0.1307) / 0.3081, 5);
    expect(Array.from(d.labels)).toEqual(Array.from(labels.data.subarray(0, 3)));
  });

  test.each([[true], [false]])('one epoch of batches holds every image exactly once, each with its own label (keepLast %s)', (keepLast) => {
    // Bugs: the last partial batch dropped; images paired with another image's label.
    const data = numbered(23);
    const batches = new duat.data.Batches(data, 2, { batchSize: 5, seed: 3, keepLast });
    expect(batches.count).toBe(keepLast ? 5 : 4);
    const seen: number[] = [];
    for (let k = 0; k < batches.count; k++) {
      const { images, labels } = batches.batch(k);
      const x = images.toArray(), y = labels.toInt32Array();
      expect(images.shape).toEqual([k === 4 ? 3 : 5, 1, 6, 6]);
      for (let b = 0; b < y.length; b++) {
        const id = x[b * 36];
        expect(x.subarray(b * 36, (b + 1) * 36).every((v) => v === id)).toBe(true);
        expect(y[b]).toBe((id * 7) % 10);
        seen.push(id);
      }
      images.dispose();
      labels.dispose();
    }
    expect(new Set(seen).size).toBe(seen.length);
    if (keepLast) expect([...seen].sort((a, b) => a - b)).toEqual(Array.from({ length: 23 }, (_, i) => i));
    else expect(seen.length).toBe(20);
    // The order is a shuffle, not the identity, and depends on the epoch.
    expect(seen.slice(0, 10)).not.toEqual(Array.from({ length: 10 }, (_, i) => i));
  });

  test('shift moves each image by a drawn offset within the bound and fills with the background; flip mirrors (bug: shift ignored)', () => {
    const S = 8, count = 40;
    const images = new Float32Array(count * S * S);
    for (let i = 0; i < count; i++) for (let p = 0; p < S * S; p++) images[i * S * S + p] = 1 + p;  // every pixel distinct
    const data: duat.data.Dataset = { name: 'ramp', images, labels: new Int32Array(count), count, channels: 1, size: S, classes: 10 };
    const background = Math.fround(-duat.data.MNIST_MEAN / duat.data.MNIST_STD);  // as stored, in float32
    const { images: out } = new duat.data.Batches(data, 0, { batchSize: count, shift: 2, shuffle: false }).batch(0);
    const x = out.toArray();
    out.dispose();
    const offsets = new Set<string>();
    for (let b = 0; b < count; b++) {
      // The pixel that holds source (y, x) = value 1 + y * S + x tells the offset.
      let found: [number, number] | null = null;
      for (let p = 0; p < S * S && !found; p++) {
        const v = x[b * S * S + p];
        if (v !== background) {
          const src = v - 1;
          found = [Math.floor(src / S) - Math.floor(p / S), (src % S) - (p % S)];
        }
      }
      const [dy, dx] = found!;
      expect(Math.abs(dy)).toBeLessThanOrEqual(2);
      expect(Math.abs(dx)).toBeLessThanOrEqual(2);
      offsets.add(`${dy},${dx}`);
      for (let y = 0; y < S; y++)
        for (let xx = 0; xx < S; xx++) {
          const sy = y + dy, sx = xx + dx;
          const want = sy >= 0 && sy < S && sx >= 0 && sx < S ? 1 + sy * S + sx : background;
          expect(x[b * S * S + y * S + xx]).toBeCloseTo(want, 5);
        }
    }
    expect(offsets.size).toBeGreaterThan(8);  // 25 possible offsets over 40 images
    const { images: flipped } = new duat.data.Batches(data, 0, { batchSize: count, flip: true, shuffle: false }).batch(0);
    const f = flipped.toArray();
    flipped.dispose();
    let mirrored = 0;
    for (let b = 0; b < count; b++) {
      const row = Array.from(f.subarray(b * S * S, b * S * S + S));
      if (row[0] === S) {
        mirrored++;
        expect(row).toEqual(Array.from({ length: S }, (_, i) => S - i));
      } else {
        expect(row).toEqual(Array.from({ length: S }, (_, i) => 1 + i));
      }
    }
    expect(mirrored).toBeGreaterThan(5);
    expect(mirrored).toBeLessThan(35);
  });
});

describe('schedule', () => {
  const r = { lr: 1e-2, minLr: 1e-4, warmupSteps: 10, schedule: 'cosine' as const };
  test('linear warm-up reaches the peak at its last step (bug: off by one)', () => {
    expect(learningRate(0, 110, r)).toBeCloseTo(1e-3, 12);
    expect(learningRate(4, 110, r)).toBeCloseTo(5e-3, 12);
    expect(learningRate(9, 110, r)).toBeCloseTo(1e-2, 12);
  });
  test('cosine decay from the peak to minLr, half-way at the middle (bug: inverted)', () => {
    expect(learningRate(10, 110, r)).toBeCloseTo(1e-2, 12);
    expect(learningRate(60, 110, r)).toBeCloseTo((1e-2 + 1e-4) / 2, 12);
    expect(learningRate(35, 110, r)).toBeCloseTo(1e-4 + 0.5 * (1e-2 - 1e-4) * (1 + Math.cos(Math.PI / 4)), 12);
    expect(learningRate(110, 110, r)).toBeCloseTo(1e-4, 12);
    expect(learningRate(200, 110, r)).toBeCloseTo(1e-4, 12);
  });
  test("the 'step' schedule: x0.1 at half and x0.01 at three quarters of the steps after warm-up", () => {
    const s = { ...r, schedule: 'step' as const };
    expect(learningRate(59, 110, s)).toBeCloseTo(1e-2, 12);
    expect(learningRate(60, 110, s)).toBeCloseTo(1e-3, 12);
    expect(learningRate(84, 110, s)).toBeCloseTo(1e-3, 12);
    expect(learningRate(85, 110, s)).toBeCloseTo(1e-4, 12);
  });
});

describe('optimizers against their formulas', () => {
  /** One scalar parameter p with gradient g, stepped by `opt`. */
  function stepScalar(make: (p: duat.Tensor) => duat.optim.AdamW | duat.optim.SGD, p0: number, grads: number[]): number[] {
    const p = duat.tensor([p0], [1], { requiresGrad: true });
    const opt = make(p);
    const out: number[] = [];
    for (const g of grads) {
      duat.tidy(() => p.mul(g).sum().backward());
      opt.step();
      opt.zeroGrad();
      out.push(p.toArray()[0]);
    }
    opt.dispose();
    p.dispose();
    return out;
  }

  test('AdamW defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 (bug: a default changed)', () => {
    const got = stepScalar((p) => new duat.optim.AdamW([p]), 2, [0.5, -0.25, 1]);
    let p = 2, m = 0, v = 0;
    const want: number[] = [];
    [0.5, -0.25, 1].forEach((g, i) => {
      const t = i + 1;
      p *= 1 - 1e-3 * 0.01;
      m = 0.9 * m + 0.1 * g;
      v = 0.999 * v + 0.001 * g * g;
      p -= (1e-3 * (m / (1 - 0.9 ** t))) / (Math.sqrt(v / (1 - 0.999 ** t)) + 1e-8);
      want.push(p);
    });
    got.forEach((x, i) => expect(x).toBeCloseTo(want[i], 6));
  });

  test('SGD momentum accumulates across steps; Nesterov looks ahead; dampening scales the new gradient', () => {
    const grads = [1, 0.5, -2];
    const run = (momentum: number, dampening: number, nesterov: boolean) =>
      stepScalar((p) => new duat.optim.SGD([p], { lr: 0.1, momentum, dampening, nesterov }), 1, grads);
    const ref = (momentum: number, dampening: number, nesterov: boolean) => {
      let p = 1, buf = 0;
      return grads.map((g, i) => {
        buf = i === 0 ? g : momentum * buf + (1 - dampening) * g;
        p -= 0.1 * (nesterov ? g + momentum * buf : buf);
        return p;
      });
    };
    for (const [m, d, n] of [[0.9, 0, false], [0.9, 0, true], [0.5, 0.3, false], [0, 0, false]] as const) {
      run(m, d, n).forEach((x, i) => expect(x).toBeCloseTo(ref(m, d, n)[i], 6));
    }
  });

  test("fit's optimizer: SGD with momentum 0.9 and Nesterov, and no decay on norms, biases, cls_token and pos_embed", () => {
    const model = new duat.ParaFormer({ dim: 16, heads: 2, depth: 1, branches: 2 });
    const sgd = makeOptimizer(model, { optimizer: 'sgd', lr: 0.05, weightDecay: 0.05 });
    expect(sgd.groups.map((g) => g.options)).toEqual([
      { lr: 0.05, momentum: 0.9, dampening: 0, weightDecay: 0.05, nesterov: true },
      { lr: 0.05, momentum: 0.9, dampening: 0, weightDecay: 0, nesterov: true },
    ]);
    const adamw = makeOptimizer(model, { optimizer: 'adamw', lr: 1e-3, weightDecay: 0.05 });
    expect(adamw.groups.map((g) => g.options.weightDecay)).toEqual([0.05, 0]);
    const name = new Map(model.namedParameters().map(([n, p]) => [p, n]));
    const plain = adamw.groups[1].params.map((p) => name.get(p)!).sort();
    expect(plain).toEqual(model.namedParameters().map(([n]) => n)
      .filter((n) => /\.bias$|norm/.test(n) || n === 'cls_token' || n === 'pos_embed').sort());
    expect(plain).toContain('pos_embed');
    expect(adamw.groups[0].params.map((p) => name.get(p))).toContain('stages.0.attn.qkv.weight');
    for (const d of [sgd, adamw, model]) d.dispose();
  });
});

/** Float64 Para-Former forward from the papers' definition, branch by branch (no fusion). */
function referenceForward(model: duat.ParaFormer, x: duat.Tensor): { logits: R.Arr; maps: R.Arr[][] } {
  const c = model.config;
  const P = new Map(model.namedParameters().map(([n, p]) => [n, R.arr(p.toArray(), p.shape)]));
  const get = (n: string) => P.get(n)!;
  const branch = (n: string, b: number): R.Arr => {
    const t = get(n);
    const inner = t.shape.slice(1), size = R.numel(inner);
    return R.arr(t.data.subarray(b * size, (b + 1) * size), inner);
  };
  const [B] = x.shape;
  const C = c.dim, T = (c.imageSize / c.patchSize) ** 2, T1 = T + 1;
  const patches = R.patchify(R.arr(x.toArray(), x.shape), c.patchSize);
  const pw = get('patch_embed.proj.weight');
  const emb = R.linear(patches, R.arr(pw.data, [C, R.numel(pw.shape.slice(1))]), get('patch_embed.bias') ?? get('patch_embed.proj.bias'));
  let h = new Float64Array(B * T1 * C);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T1; t++)
      for (let k = 0; k < C; k++)
        h[(b * T1 + t) * C + k] = (t === 0 ? get('cls_token').data[k] : emb.data[(b * T + t - 1) * C + k]) + get('pos_embed').data[t * C + k];
  const scale = c.combine === 'mean' ? 1 / c.branches : 1;
  const maps: R.Arr[][] = [];
  const gelu = (v: number) => 0.5 * v * (1 + R.erf(v / Math.SQRT2));
  for (let s = 0; s < c.depth; s++) {
    const xs: R.Arr = { data: h, shape: [B, T1, C] };
    const next = Float64Array.from(h);
    maps.push([]);
    for (let b = 0; b < c.branches; b++) {
      const p = (k: string) => branch(`stages.${s}.${k}`, b);
      const qkv = R.linear(R.layerNorm(xs, p('norm1.weight'), p('norm1.bias'), 1e-6), p('attn.qkv.weight'), p('attn.qkv.bias'));
      maps[s].push(R.attentionProbs(qkv, c.heads));
      const a = R.linear(R.attention(qkv, c.heads), p('attn.proj.weight'), p('attn.proj.bias'));
      const y = { data: xs.data.map((v, i) => v + a.data[i]), shape: xs.shape };
      const u = R.linear(R.layerNorm(y, p('norm2.weight'), p('norm2.bias'), 1e-6), p('mlp.fc1.weight'), p('mlp.fc1.bias'));
      const m = R.linear({ data: u.data.map(gelu), shape: u.shape }, p('mlp.fc2.weight'), p('mlp.fc2.bias'));
      for (let i = 0; i < next.length; i++) next[i] += scale * (a.data[i] + m.data[i]);
    }
    h = next;
  }
  const cls = new Float64Array(B * C);
  for (let b = 0; b < B; b++) cls.set(h.subarray(b * T1 * C, b * T1 * C + C), b * C);
  const logits = R.linear(R.layerNorm({ data: cls, shape: [B, C] }, get('norm.weight'), get('norm.bias'), 1e-6), get('head.weight'), get('head.bias'));
  return { logits, maps };
}

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0, scale = 1e-12;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]));
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return a.length === b.length ? worst / scale : Infinity;
}

describe('the model against a branch-by-branch float64 reference', () => {
  test.each([['sum', 3], ['mean', 3], ['mean', 2]] as const)(
    "combine '%s' with %i branches: logits (bug: 'mean' scaled by 1/(n+1))",
    (combine, branches) => {
      const model = new duat.ParaFormer({ dim: 16, heads: 2, depth: 2, branches, patchSize: 7, combine, seed: 11 });
      duat.tidy(() => {
        const x = duat.randn([2, 1, 28, 28], { seed: 4 });
        const ref = referenceForward(model, x);
        expect(maxRel(model.forward(x).toArray(), ref.logits.data)).toBeLessThan(1e-4);
      });
      model.dispose();
    },
  );

  test('dynamicParameters: every stage and branch gets its own attention maps (bug: branch 0 for all)', () => {
    const model = new duat.ParaFormer({ dim: 16, heads: 2, depth: 2, branches: 3, patchSize: 7, seed: 5 });
    duat.tidy(() => {
      const x = duat.randn([2, 1, 28, 28], { seed: 6 });
      const ref = referenceForward(model, x);
      const got = model.dynamicParameters(x);
      expect(got.map((g) => [g.stage, g.branch])).toEqual([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]);
      for (const g of got) {
        expect(g.maps.shape).toEqual([2, 2, 17, 17]);
        expect(maxRel(g.maps.toArray(), ref.maps[g.stage][g.branch].data)).toBeLessThan(1e-4);
      }
    });
    model.dispose();
  });
});

test('evaluate: confusion[true][predicted] (bug: transposed)', async () => {
  const model = new duat.ParaFormer({ dim: 16, heads: 2, depth: 1, branches: 2, patchSize: 7, seed: 2 });
  const data = duat.data.loadMnist('test', { dir: SLICE, limit: 60 });
  const x = duat.tensor(data.images, [60, 1, 28, 28]);
  const predicted = duat.noGrad(() => duat.tidy(() => model.forward(x).argmax().toInt32Array()));
  x.dispose();
  const want = Array.from({ length: 10 }, () => new Array<number>(10).fill(0));
  for (let i = 0; i < 60; i++) want[data.labels[i]][predicted[i]]++;
  // Untrained, the predictions are not the labels: the matrix is not symmetric, so a transpose shows.
  expect(want).not.toEqual(want[0].map((_, j) => want.map((row) => row[j])));
  const r = await duat.evaluate(model, data, 25);
  expect(r.confusion).toEqual(want);
  expect(r.accuracy).toBeCloseTo(want.reduce((a, row, i) => a + row[i], 0) / 60, 12);
  expect(r.count).toBe(60);
  model.dispose();
});

test('loadViT interpolates pos_embed bilinearly (half-pixel centres) when the grid changes', () => {
  // A 2 x 2 grid to 4 x 4: output centre (y + 0.5) * 2 / 4 - 0.5, clamped at the border.
  const fs = require('fs') as typeof import('fs');
  const os = require('os') as typeof import('os');
  const src = new duat.ParaFormer({ imageSize: 14, patchSize: 7, channels: 1, classes: 10, dim: 4, heads: 1, depth: 1, branches: 1, seed: 1 });
  const pos = src.namedParameters().find(([n]) => n === 'pos_embed')![1];
  const table = Float32Array.from({ length: 5 * 4 }, (_, i) => [0.5, 1, 2, 4, 8][Math.floor(i / 4)] * (1 + (i % 4)));
  pos.copy_(duat.tensor(table, [1, 5, 4]));
  const entries: [string, duat.Tensor][] = [];
  const made: duat.Tensor[] = [];
  for (const [n, p] of src.namedParameters()) {
    const m = /^stages\.0\.(.*)$/.exec(n);
    if (!m) entries.push([n, p]);
    else {
      const t = p.slice(0, 0, 1).reshape(p.shape.slice(1)).contiguous();
      made.push(t);
      entries.push([`blocks.0.${m[1]}`, t]);
    }
  }
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'duat-teeth-')), 'vit.safetensors');
  duat.saveSafetensors(file, entries);
  const big = duat.loadViT(file, { imageSize: 28, heads: 1 });
  const got = big.namedParameters().find(([n]) => n === 'pos_embed')![1].toArray();
  const g = [[1, 2], [4, 8]];  // the grid's first-channel values
  const w = [0, 0.25, 0.75, 1];  // bilinear weights of output 0..3 between source 0 and 1 (clamped ends)
  expect(got[0]).toBeCloseTo(0.5, 6);  // the class token is kept
  for (let y = 0; y < 4; y++)
    for (let x = 0; x < 4; x++) {
      const top = g[0][0] * (1 - w[x]) + g[0][1] * w[x], bottom = g[1][0] * (1 - w[x]) + g[1][1] * w[x];
      expect(got[(1 + y * 4 + x) * 4]).toBeCloseTo(top * (1 - w[y]) + bottom * w[y], 5);
    }
  for (const t of made) t.dispose();
  src.dispose();
  big.dispose();
});

describe('optimizer arguments and state', () => {
  const param = (v: number[]) => duat.tensor(v, [v.length], { requiresGrad: true });

  test('every bad option is refused with an error naming it', () => {
    const p = param([1]);
    const cases: [() => unknown, RegExp][] = [
      [() => new duat.optim.AdamW([p], 5 as unknown as object), /Expected an options object for AdamW options/],
      [() => new duat.optim.AdamW([p], { lr: -1 }), /for lr but received -1/],
      [() => new duat.optim.AdamW([p], { betas: [1.5, 0.9] }), /for betas\[0\] but received 1\.5/],
      [() => new duat.optim.AdamW([p], { betas: [0.9, -1] }), /for betas\[1\] but received -1/],
      [() => new duat.optim.AdamW([p], { eps: -1 }), /for eps but received -1/],
      [() => new duat.optim.AdamW([p], { weightDecay: -1 }), /for weightDecay but received -1/],
      [() => new duat.optim.SGD([p], 'x' as unknown as object), /Expected an options object for SGD options/],
      [() => new duat.optim.SGD([p], { lr: NaN }), /for lr but received NaN/],
      [() => new duat.optim.SGD([p], { momentum: -0.5 }), /for momentum but received -0\.5/],
      [() => new duat.optim.SGD([p], { dampening: 2 }), /number in \[0, 1\] for dampening but received 2/],
      [() => new duat.optim.SGD([p], { weightDecay: -2 }), /for weightDecay but received -2/],
      [() => new duat.optim.SGD([p], { nesterov: 1 as unknown as boolean }), /Expected boolean for nesterov but received 1/],
      [() => new duat.optim.SGD([], {}), /Expected a non-empty array of parameters or parameter groups/],
      [() => new duat.optim.SGD([{ params: [p] }, null as unknown as { params: duat.Tensor[] }]), /Expected a parameter group for params\[1\] but received null/],
      [() => new duat.optim.SGD([{ params: [p, 3 as unknown as duat.Tensor] }]), /Expected a tensor for params\[0\]\[1\] but received 3/],
      [() => new duat.optim.SGD([{ params: [p], options: { nesterov: 'yes' as unknown as boolean } }]), /Expected boolean for params\[0\]\.options\.nesterov but received "yes"/],
      [() => new duat.optim.SGD([{ params: [p], options: { lr: -3 } }]), /for params\[0\]\.options\.lr but received -3/],
      [() => new duat.optim.SGD([{ params: [p], options: { betas: [1, 1] } as object }]), /Unknown option params\[0\]\.options\.betas/],
      [() => new duat.optim.SGD([{ params: [p] }, { params: [p] }]), /a parameter appears twice in the optimizer's groups \(group 1\)/],
    ];
    for (const [call, message] of cases) {
      expect(call).toThrow(duat.ArgumentError);
      expect(call).toThrow(message);
    }
    const opt = new duat.optim.SGD([p]);
    expect(() => opt.setLearningRate(-1)).toThrow(/for lr but received -1/);
    const q = param([2]);
    const adam = new duat.optim.AdamW([p]);
    expect(() => adam.restoreState(q, q, q, 0)).toThrow(/the parameter is not managed by this optimizer/);
    expect(() => adam.restoreState(p, p, p, -1)).toThrow(/for step but received -1/);
    for (const d of [opt, adam, p, q]) d.dispose();
  });

  test('defaults: SGD lr 0.01 without momentum, dampening, decay or Nesterov; a group without options takes them', () => {
    const p = param([1]), q = param([2]);
    const opt = new duat.optim.SGD([{ params: [p] }, { params: [q], options: { lr: 0.5 } }], { momentum: 0.9 });
    expect(opt.groups[0].options).toEqual({ lr: 0.01, momentum: 0.9, dampening: 0, weightDecay: 0, nesterov: false });
    expect(opt.groups[1].options).toEqual({ lr: 0.5, momentum: 0.9, dampening: 0, weightDecay: 0, nesterov: false });
    // Default Nesterov off: two momentum steps follow the plain formula.
    for (let k = 0; k < 2; k++) {
      duat.tidy(() => p.mul(1).sum().backward());
      opt.step();
      opt.zeroGrad();
    }
    expect(p.toArray()[0]).toBeCloseTo(1 - 0.01 * 1 - 0.01 * (0.9 + 1), 6);
    opt.dispose();
    for (const t of [p, q]) t.dispose();
  });

  test('state: none before the first update; AdamW moments and the SGD buffer after it; a disposed optimizer is refused', () => {
    const p = param([1, -1]);
    const adam = new duat.optim.AdamW([p], { lr: 0.1 });
    expect(adam.stateFor(p)).toBeUndefined();
    duat.tidy(() => p.mul(duat.tensor([2, 4], [2])).sum().backward());
    adam.step();
    const s = adam.stateFor(p)!;
    expect(Array.from(s.m.toArray())).toEqual([Math.fround(0.1 * 2), Math.fround(0.1 * 4)]);
    expect(s.v.toArray()[1]).toBeCloseTo(0.001 * 16, 7);
    expect(s.step).toBe(1);
    expect(adam.stepCount).toBe(1);
    adam.dispose();
    expect(() => adam.step()).toThrow(duat.DisposedError);
    const sgd = new duat.optim.SGD([p], { lr: 0.1, momentum: 0.9 });
    expect(sgd.bufferFor(p)).toBeUndefined();
    sgd.step();  // p's gradient is still (2, 4)
    expect(Array.from(sgd.bufferFor(p)!.toArray())).toEqual([2, 4]);
    sgd.dispose();
    p.dispose();
  });

  test('clipGradNorm scales every gradient to the norm asked and returns the norm before; below it nothing changes', () => {
    const a = param([3, 0]), b = param([0, 4]);
    duat.tidy(() => a.mul(duat.tensor([3, 0], [2])).sum().add(b.mul(duat.tensor([0, 4], [2])).sum()).backward());
    expect(duat.optim.clipGradNorm([a, b], 10)).toBeCloseTo(5, 6);  // below: unchanged
    expect(Array.from(a.grad!.toArray())).toEqual([3, 0]);
    expect(duat.optim.clipGradNorm([a, b], 5)).toBeCloseTo(5, 6);  // equal: unchanged
    expect(Array.from(b.grad!.toArray())).toEqual([0, 4]);
    expect(duat.optim.clipGradNorm([a, b], 1)).toBeCloseTo(5, 6);
    expect(a.grad!.toArray()[0]).toBeCloseTo(0.6, 5);
    expect(b.grad!.toArray()[1]).toBeCloseTo(0.8, 5);
    expect(duat.optim.clipGradNorm([param([1])], 1)).toBe(0);  // no gradients
    expect(() => duat.optim.clipGradNorm(3 as unknown as duat.Tensor[], 1)).toThrow(/Expected an array of parameters but received 3/);
    expect(() => duat.optim.clipGradNorm([a, 'x' as unknown as duat.Tensor], 1)).toThrow(/Expected a tensor for params\[1\] but received "x"/);
    expect(() => duat.optim.clipGradNorm([a], -1)).toThrow(/for maxNorm but received -1/);
    for (const t of [a, b]) t.dispose();
  });
});
